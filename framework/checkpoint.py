"""A run's resume state on disk: one ``state.pt`` per run folder, written atomically after every epoch.

It holds data only (tensors and plain values: it loads with ``torch.load(weights_only=True)``), including
the fingerprints of the data it was trained on, so a resume on changed data can be refused.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from framework.io import atomic_write
from framework.method import Adapted

CHECKPOINT_FILE = "state.pt"


def save_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Resume state; ``weights_only=True``: a checkpoint file can hold data, never code. ``mmap``: tensors are
    read only when touched (reading a checkpoint's record without loading its weights)."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def checkpoint_data_files(path: str | os.PathLike) -> Optional[dict[str, str]]:
    """The data fingerprints a checkpoint was trained on (``None`` for a checkpoint that records none)."""
    return load_checkpoint(Path(path), mmap=True).get("data_files")


def load_trainable(adapted: Adapted, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in adapted.head + adapted.adapter:
            param.copy_(state[name].to(param.device, param.dtype))
