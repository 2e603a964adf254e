"""Token rows of a causal-LM task: the dataset, padding, and the on-disk cache of tokenised training rows.

A training row is ``{"input_ids", "labels"}`` (1-d int32 arrays; prompt labels are ``IGNORE``). The cache
stores all rows of a split as two flat arrays plus offsets, the layout the GLUE cache uses.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

IGNORE = -100


def ensure_pad_token(tokenizer) -> Optional[str]:
    """Give a tokenizer without a pad token its EOS as pad (labels are built from lengths, so EOS
    targets stay in the loss). Returns what was set, or None when it already had one."""
    if tokenizer.pad_token_id is not None:
        return None
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad nor an EOS token")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.eos_token


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def pad_batch(sequences: list[np.ndarray], value: int, left: bool) -> torch.Tensor:
    """Pad 1-d int arrays to one length, on the left (generation) or the right (training)."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            if left:
                out[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            else:
                out[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def save_rows(path: Path, rows: list[dict], stats: dict) -> None:
    """Write training rows (and the counts of truncated/dropped rows) atomically: concurrent runs never
    read a half-written file."""
    offsets = np.concatenate([[0], np.cumsum([len(r["input_ids"]) for r in rows])]).astype(np.int64)
    empty = [np.zeros(0, np.int32)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, input_ids=np.concatenate([r["input_ids"] for r in rows] or empty),
             labels=np.concatenate([r["labels"] for r in rows] or empty), offsets=offsets,
             stats=np.array(json.dumps(stats)))
    os.replace(tmp, path)


def load_rows(path: Path) -> tuple[list[dict], dict]:
    with np.load(path, allow_pickle=False) as saved:
        ids, labels, offsets = saved["input_ids"], saved["labels"], saved["offsets"]
        stats = json.loads(str(saved["stats"]))
    return [{"input_ids": ids[a:b], "labels": labels[a:b]} for a, b in zip(offsets[:-1], offsets[1:])], stats
