"""The ``trainer`` config block (``conf/trainer/default.yaml``), checked before any compute."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from framework.checks import is_int, is_number

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEVICES = ("auto", "cpu")


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` config block, checked on construction (bad values fail before any compute)."""

    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    lr_adapter: float = 1e-3
    lr_head: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    grad_accum_steps: int = 1
    mixed_precision: str = "no"
    max_steps_per_epoch: Optional[int] = None
    device: str = "auto"
    num_workers: int = 0
    checkpoint_every_epoch: bool = True
    test_every_epoch: bool = True
    save_best: bool = True
    progress_bar: bool = True
    fail_on_nonfinite: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not (is_int(self.epochs) and self.epochs >= 0):
            problems.append(f"trainer.epochs={self.epochs!r} must be an integer >= 0 (0: evaluate only, no training)")
        for key in ("batch_size", "eval_batch_size", "grad_accum_steps"):
            value = getattr(self, key)
            if not (is_int(value) and value >= 1):
                problems.append(f"trainer.{key}={value!r} must be an integer >= 1")
        for key in ("lr_adapter", "lr_head", "weight_decay"):
            value = getattr(self, key)
            if not (is_number(value) and math.isfinite(value) and value >= 0):
                problems.append(f"trainer.{key}={value!r} must be a finite number >= 0 "
                                f"(a negative learning rate is gradient ascent)")
        if not (is_number(self.warmup_ratio) and 0.0 <= self.warmup_ratio <= 1.0):
            problems.append(f"trainer.warmup_ratio={self.warmup_ratio!r} must be in [0, 1] (a fraction of the steps)")
        if self.max_grad_norm is not None and not (is_number(self.max_grad_norm) and self.max_grad_norm > 0):
            problems.append(f"trainer.max_grad_norm={self.max_grad_norm!r} must be > 0, or null for no clipping")
        if self.max_steps_per_epoch is not None and not (is_int(self.max_steps_per_epoch) and self.max_steps_per_epoch >= 1):
            problems.append(f"trainer.max_steps_per_epoch={self.max_steps_per_epoch!r} must be null or an integer >= 1")
        if not (is_int(self.num_workers) and self.num_workers >= 0):
            problems.append(f"trainer.num_workers={self.num_workers!r} must be an integer >= 0")
        for key, valid in (("scheduler", SCHEDULERS), ("mixed_precision", MIXED_PRECISION), ("device", DEVICES)):
            if getattr(self, key) not in valid:
                problems.append(f"trainer.{key}={getattr(self, key)!r} is not one of {list(valid)}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TrainerSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown trainer keys {unknown}; valid keys: {sorted(known)}")
        return cls(**dict(cfg))

    def per_device_batch_size(self, num_processes: int) -> int:
        """Examples per forward pass on one process; ``ValueError`` when the global batch does not split."""
        parts = num_processes * self.grad_accum_steps
        if self.batch_size % parts:
            raise ValueError(f"trainer.batch_size={self.batch_size} (the global batch of one update) does not split "
                             f"over {num_processes} process(es) x grad_accum_steps={self.grad_accum_steps}; use a "
                             f"multiple of {parts}")
        return self.batch_size // parts
