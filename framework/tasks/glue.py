"""GLUE tasks of the paper's Table 2 (SST-2, MRPC, CoLA, QNLI, RTE, STS-B) behind the ``Task`` interface.

Data comes from the Hub (``nyu-mll/glue``) or, with ``data_dir``, from original GLUE TSV files.
GLUE test labels are hidden, so the split protocol is an explicit, recorded choice (``split``):

- ``holdout`` (default): val = a seeded hold-out from GLUE train, test = the GLUE dev set. Val size
  defaults to min(1,000, 10% of train): small tasks (RTE 2,490, MRPC 3,668 train rows) give up only
  10% of their training data and get a val set about as large as their dev/test set (249 vs 277,
  367 vs 408); large tasks stop at 1,000 rows, where the standard error of accuracy (about 1.5 points)
  is enough to pick an epoch and evaluating every epoch stays cheap.
- ``dev_half``: train = all of GLUE train; the dev set is cut into two seeded halves, val and test.
- ``dev``: val and test are both the dev set, as many papers do. Leaky: the epoch is chosen on test.

``split_seed`` (not the training seed) fixes the split and the ``max_train_samples`` /
``max_eval_samples`` subsets, so every seed of a sweep sees the same data. Subsets of growing size
are nested (they are prefixes of one seeded permutation).

Tokenised train/dev are cached under ``cache_dir/glue_tokenized`` as ``.npz`` files keyed by task,
data source (file sha256 or Hub content hash), tokenizer (hash of its full definition) and
``max_length``. Splitting is index arithmetic on the cached arrays, so one cache entry serves every
split protocol and subset size.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from framework.checks import is_int
from framework.fingerprint import file_sha256, tokenizer_fingerprint
from framework.models import Head, position_limit
from framework.tasks.base import Task
from framework.tasks.glue_data import (
    GLUE_TASKS,
    RawSplit,
    load_hub_splits,
    read_glue_tsv,
    resolve_task_folder,
)

SPLIT_PROTOCOLS = ("holdout", "dev_half", "dev")
METRIC_DIR = Path(__file__).resolve().parent / "glue_metric"
DEFAULT_VAL_CAP = 1000
DEFAULT_VAL_FRACTION = 0.1
CACHE_FORMAT_VERSION = 1
_TOKENIZE_CHUNK = 2000


class TokenizedSplit(torch.utils.data.Dataset):
    """Rows ``indices`` of a tokenised store (flat int32 arrays + offsets); rows are dicts."""

    def __init__(self, store: dict[str, np.ndarray], indices: np.ndarray):
        self.store = store
        self.indices = np.asarray(indices, dtype=np.int64)
        self.fields = [k for k in store if k not in ("offsets", "labels")]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        row = int(self.indices[position])
        start, stop = int(self.store["offsets"][row]), int(self.store["offsets"][row + 1])
        item = {field: self.store[field][start:stop].tolist() for field in self.fields}
        item["labels"] = self.store["labels"][row].item()
        return item


class GlueCollator:
    """Pads a batch to its longest row (dynamic padding); labels are long, or float for regression."""

    def __init__(self, tokenizer, is_regression: bool):
        self.tokenizer = tokenizer
        self.label_dtype = torch.float32 if is_regression else torch.long

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([row["labels"] for row in rows], dtype=self.label_dtype)
        inputs = [{k: v for k, v in row.items() if k != "labels"} for row in rows]
        batch = dict(self.tokenizer.pad(inputs, padding="longest", return_tensors="pt"))
        batch["labels"] = labels
        return batch


class GlueTask(Task):
    model_kind = "sequence-classification"
    processor_kind = "tokenizer"

    def __init__(
        self,
        name: str,
        data_dir: Optional[str] = None,
        hub_dataset: str = "nyu-mll/glue",
        split: str = "holdout",
        split_seed: int = 0,
        val_size: int | float | None = None,
        max_train_samples: Optional[int] = None,
        max_eval_samples: Optional[int] = None,
        max_length: int = 512,
        cache_dir: str | os.PathLike = "~/.cache/c3a",
    ):
        self.name = name
        self.data_dir = None if data_dir is None else str(data_dir)
        self.hub_dataset = hub_dataset
        self.split = split
        self.split_seed = split_seed
        self.val_size = val_size
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.max_length = max_length
        self.cache_dir = Path(cache_dir).expanduser()
        self._metric = None
        self._split_info: dict[str, Any] = {}
        self._raw: Optional[dict[str, RawSplit]] = None
        self.validate()
        self.spec = GLUE_TASKS[name]
        self.selection_metric = self.spec.selection_metric

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        if self.name not in GLUE_TASKS:
            raise ValueError(f"unknown GLUE task name={self.name!r}; valid choices: {list(GLUE_TASKS)}")
        if self.split not in SPLIT_PROTOCOLS:
            raise ValueError(f"unknown split={self.split!r}; valid choices: {list(SPLIT_PROTOCOLS)}")
        if not is_int(self.split_seed):
            raise ValueError(f"split_seed={self.split_seed!r} must be an integer")
        val = self.val_size
        if not (val is None or (is_int(val) and val >= 1)
                or (isinstance(val, float) and 0.0 < val < 1.0)):
            raise ValueError(
                f"val_size={val!r} is invalid; use null (min({DEFAULT_VAL_CAP}, "
                f"{DEFAULT_VAL_FRACTION:.0%} of train)), an integer count >= 1, or a fraction in (0, 1)"
            )
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and value >= 1):
                raise ValueError(f"{key}={value!r} must be null or an integer >= 1")
        if not (is_int(self.max_length) and self.max_length >= 2):
            raise ValueError(f"max_length={self.max_length!r} must be an integer >= 2")
        if self.data_dir is not None:
            resolve_task_folder(self.data_dir, GLUE_TASKS[self.name])

    def check_data(self) -> None:
        """Read and parse the files (or the Hub copy) now, so malformed data fails before any compute."""
        if self._raw is None:
            self._raw = self._read_raw() if self.data_dir is not None else load_hub_splits(self.spec, self.hub_dataset)

    def data_files(self) -> list:
        return [] if self.data_dir is None else sorted(resolve_task_folder(self.data_dir, self.spec).glob("*.tsv"))

    def head(self) -> Head:
        problem = "regression" if self.spec.is_regression else "single_label_classification"
        return Head(model_kwargs={"num_labels": self.spec.num_labels, "problem_type": problem}, trains=True,
                    fresh=True)

    def check_model(self, model_config) -> None:
        limit = position_limit(model_config) if model_config is not None else None
        if limit is not None and self.max_length > limit:
            raise ValueError(f"task.max_length={self.max_length} exceeds the {limit} positions of the model's "
                             f"position embeddings; set task.max_length <= {limit}")

    # ------------------------------------------------------------------- data
    def _source(self) -> tuple[dict, Optional[dict[str, RawSplit]]]:
        """Description of the data source (part of the cache key) and, for the Hub, the raw data."""
        if self.data_dir is not None:
            folder = resolve_task_folder(self.data_dir, self.spec)
            source = {"kind": "data_dir", "path": str(folder.resolve()),
                      "train_sha256": file_sha256(folder / "train.tsv"),
                      "dev_sha256": file_sha256(folder / "dev.tsv")}
            return source, None
        raw = self._raw if self._raw is not None else load_hub_splits(self.spec, self.hub_dataset)
        content = hashlib.sha256(
            json.dumps({k: [list(v.texts), v.labels] for k, v in raw.items()}).encode("utf-8")
        ).hexdigest()
        return {"kind": "hub", "dataset": self.hub_dataset, "config": self.spec.hub_config,
                "content_sha256": content}, raw

    def _read_raw(self) -> dict[str, RawSplit]:
        folder = resolve_task_folder(self.data_dir, self.spec)
        return {part: read_glue_tsv(folder / f"{part}.tsv", self.spec) for part in ("train", "dev")}

    def _tokenize(self, raw: RawSplit, tokenizer) -> dict[str, np.ndarray]:
        columns: dict[str, list] = {}
        lengths: list[int] = []
        for start in range(0, len(raw), _TOKENIZE_CHUNK):
            texts = [column[start:start + _TOKENIZE_CHUNK] for column in raw.texts]
            encoded = tokenizer(*texts, truncation=True, max_length=self.max_length)
            for field, rows in encoded.items():
                columns.setdefault(field, []).extend(rows)
            lengths.extend(len(ids) for ids in encoded["input_ids"])
        store = {field: np.fromiter((t for row in rows for t in row), dtype=np.int32)
                 for field, rows in columns.items()}
        store["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        label_dtype = np.float32 if self.spec.is_regression else np.int64
        store["labels"] = np.asarray(raw.labels, dtype=label_dtype)
        return store

    def _tokenized_stores(self, tokenizer) -> dict[str, dict[str, np.ndarray]]:
        source, raw = self._source()
        key_fields = {"format": CACHE_FORMAT_VERSION, "task": self.name, "source": source,
                      "tokenizer": tokenizer_fingerprint(tokenizer), "max_length": self.max_length}
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode("utf-8")).hexdigest()
        path = self.cache_dir / "glue_tokenized" / f"{self.name}-{key[:20]}.npz"
        self._split_info.update(source=source, tokenized_cache=str(path))
        if path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                flat = {name: saved[name] for name in saved.files if name != "meta"}
            stores: dict[str, dict[str, np.ndarray]] = {"train": {}, "dev": {}}
            for name, array in flat.items():
                part, field = name.split("__", 1)
                stores[part][field] = array
            self._split_info["cache_hit"] = True
            return stores
        raw = raw if raw is not None else (self._raw if self._raw is not None else self._read_raw())
        stores = {part: self._tokenize(raw[part], tokenizer) for part in ("train", "dev")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        arrays = {f"{part}__{field}": a for part, store in stores.items() for field, a in store.items()}
        meta = dict(key_fields, tokenizer_name=getattr(tokenizer, "name_or_path", ""))
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
        self._split_info["cache_hit"] = False
        return stores

    def _resolve_val_size(self, n_train: int) -> int:
        if self.val_size is None:
            count = min(DEFAULT_VAL_CAP, round(DEFAULT_VAL_FRACTION * n_train))
        elif isinstance(self.val_size, float):
            count = round(self.val_size * n_train)
        else:
            count = int(self.val_size)
        if not 1 <= count < n_train:
            raise ValueError(
                f"val_size={self.val_size!r} gives {count} validation rows from {n_train} train rows; "
                f"it must leave at least one row on each side"
            )
        return count

    def split_indices(self, n_train: int, n_dev: int) -> dict[str, tuple[str, np.ndarray]]:
        """``{split: (source store, row indices)}`` under the configured protocol and subsets."""
        split_seq, train_seq, eval_seq = np.random.SeedSequence(self.split_seed).spawn(3)
        split_rng, train_rng = np.random.default_rng(split_seq), np.random.default_rng(train_seq)
        if self.split == "holdout":
            order = split_rng.permutation(n_train)
            n_val = self._resolve_val_size(n_train)
            out = {"train": ("train", np.sort(order[n_val:])), "val": ("train", np.sort(order[:n_val])),
                   "test": ("dev", np.arange(n_dev))}
            self._split_info["val_size"] = n_val
        elif self.split == "dev_half":
            if n_dev < 2:
                raise ValueError(f"split=dev_half needs at least 2 dev rows, got {n_dev}")
            order = split_rng.permutation(n_dev)
            half = n_dev // 2
            out = {"train": ("train", np.arange(n_train)), "val": ("dev", np.sort(order[:half])),
                   "test": ("dev", np.sort(order[half:]))}
        else:
            out = {"train": ("train", np.arange(n_train)), "val": ("dev", np.arange(n_dev)),
                   "test": ("dev", np.arange(n_dev))}
        self._split_info["train_pool_size"] = len(out["train"][1])
        if self.max_train_samples is not None and self.max_train_samples < len(out["train"][1]):
            pool = out["train"][1]
            out["train"] = ("train", np.sort(pool[train_rng.permutation(len(pool))[: self.max_train_samples]]))
        if self.max_eval_samples is not None:
            for name in ("val", "test"):
                part, rows = out[name]
                if self.max_eval_samples < len(rows):
                    # same permutation for val and test so split=dev keeps them identical
                    picked = np.random.default_rng(eval_seq).permutation(len(rows))
                    out[name] = (part, np.sort(rows[picked[: self.max_eval_samples]]))
        return out

    def splits(self, tokenizer) -> dict[str, TokenizedSplit]:
        self.validate()
        limit = getattr(tokenizer, "model_max_length", None)
        if limit is not None and limit < 1_000_000 and self.max_length > limit:
            raise ValueError(
                f"max_length={self.max_length} exceeds the tokenizer's model_max_length={limit}; "
                f"set task.max_length <= {limit}"
            )
        stores = self._tokenized_stores(tokenizer)
        n_train, n_dev = len(stores["train"]["labels"]), len(stores["dev"]["labels"])
        self._split_info.update(full_train_size=n_train, dev_size=n_dev)
        result = {name: TokenizedSplit(stores[part], rows)
                  for name, (part, rows) in self.split_indices(n_train, n_dev).items()}
        self._split_info["sizes"] = {name: len(split) for name, split in result.items()}
        return result

    def collate(self, tokenizer, split: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return GlueCollator(tokenizer, self.spec.is_regression)

    # ------------------------------------------------------- loss and metrics
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        expected = self.spec.num_labels
        if logits.ndim != 2 or logits.shape[-1] != expected or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{self.name}: logits of shape {tuple(logits.shape)} do not fit labels of shape "
                f"{tuple(labels.shape)}; expected logits (batch, {expected})"
            )
        if self.spec.is_regression:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels.long())

    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.loss(model(**inputs).logits, batch["labels"])

    def eval_step(self, model: torch.nn.Module, batch: dict, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits of one batch, with its labels."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits.float(), batch["labels"]

    def metrics(self, outputs: list) -> dict[str, float]:
        """The GLUE metric over the whole split's logits."""
        return self.compute_metrics(torch.cat([logits.cpu() for logits, _ in outputs]).numpy(),
                                    torch.cat([labels.cpu() for _, labels in outputs]).numpy())

    def compute_metrics(self, predictions, references) -> dict[str, float]:
        logits = np.asarray(predictions)
        references = np.asarray(references).reshape(-1)
        if self.spec.is_regression:
            if not (logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)):
                raise ValueError(f"{self.name}: expected predictions (n,) or (n, 1), got {logits.shape}")
            predicted = logits.reshape(-1).astype(np.float32)
            references = references.astype(np.float32)
        else:
            if logits.ndim != 2 or logits.shape[1] != self.spec.num_labels:
                raise ValueError(
                    f"{self.name}: expected logits (n, {self.spec.num_labels}), got {logits.shape}"
                )
            predicted = logits.argmax(axis=-1).astype(np.int64)
            references = references.astype(np.int64)
        if len(predicted) == 0 or len(predicted) != len(references):
            raise ValueError(
                f"{self.name}: {len(predicted)} predictions vs {len(references)} references; "
                f"need the same non-zero count"
            )
        if self._metric is None:
            import evaluate  # slow import (pulls transformers.pipelines): only when metrics are needed

            self._metric = evaluate.load(str(METRIC_DIR), config_name=self.spec.hub_config,
                                         keep_in_memory=True)
        return {k: float(v) for k, v in self._metric.compute(predictions=predicted,
                                                              references=references).items()}

    def describe(self) -> dict:
        info = self._split_info
        return {
            "name": self.name,
            "source": info.get("source", {"kind": "data_dir", "path": self.data_dir}
                               if self.data_dir else {"kind": "hub", "dataset": self.hub_dataset}),
            "split": self.split,
            "split_seed": self.split_seed,
            "leaky": self.split == "dev",
            "leak_note": ("val and test are the same GLUE dev set: the epoch is selected on test"
                          if self.split == "dev" else None),
            "val_size": info.get("val_size", self.val_size) if self.split == "holdout" else None,
            "sizes": info.get("sizes"),
            "full_train_size": info.get("full_train_size"),
            "dev_size": info.get("dev_size"),
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
            "max_length": self.max_length,
            "selection_metric": self.selection_metric,
            "tokenized_cache": info.get("tokenized_cache"),
            "cache_hit": info.get("cache_hit"),
        }
