"""The training loop: train → validate every epoch → keep the best trainable state → test it.

One loop for every model, method and task. It sees an ``Adapted`` model (parameters split into head
and adapter groups) and a ``Task``; the task turns a batch into a loss and a split into metrics, so
the loop never looks inside a batch or a model output. Each epoch ends with a checkpoint (trainable
state, optimizer, scheduler, RNG states, history) that loads with ``torch.load(weights_only=True)``,
so rerunning a killed run continues where it stopped and ends with the numbers of an uninterrupted run.

``TrainerSettings.batch_size`` is the global batch of one optimizer update (the paper's batch): each of
N processes reads ``batch_size / (N · grad_accum_steps)`` examples per forward pass, and the schedule
counts the updates each process actually makes.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from framework.checks import is_int, is_number
from framework.io import atomic_write
from framework.method import Adapted
from framework.rng import rng_state, seed_everything, set_rng_state
from framework.tasks.base import Task

CHECKPOINT_FILE = "state.pt"
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEVICES = ("auto", "cpu")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: the run is recorded as failed."""


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


class EpochSeededSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch): a resumed run sees the same order as an uninterrupted one."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class MemoryTracker:
    """Peak memory over the training steps: CUDA allocator counters, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)
        self.device = device

    def report(self) -> dict[str, Any]:
        if self.cuda:
            return {"kind": "cuda", "peak_bytes": torch.cuda.max_memory_allocated(self.device),
                    "peak_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
                    "device_name": torch.cuda.get_device_name(self.device)}
        # ru_maxrss is in KiB on Linux; it covers the whole process (model load included)
        return {"kind": "cpu_peak_rss", "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def batch_examples(batch: Mapping[str, Any]) -> int:
    """Examples in a batch: dim 0 of its first tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 0


def evaluate(accelerator, model, loader, task: Task) -> dict[str, float]:
    """The task's metrics on one split, in eval mode (no dropout) and without gradients."""
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, loader, accelerator)
    return {k: float(v) for k, v in metrics.items()}


def _optimizer(adapted: Adapted, settings: TrainerSettings) -> torch.optim.Optimizer:
    groups = []
    for role, params, lr in (("head", adapted.head, settings.lr_head), ("adapter", adapted.adapter, settings.lr_adapter)):
        if params:
            groups.append({"params": [p for _, p in params], "lr": float(lr), "name": role,
                           "weight_decay": float(settings.weight_decay)})
    if not groups:
        raise ValueError("the method left no trainable parameters")
    return torch.optim.AdamW(groups)


def save_checkpoint(state: Mapping[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(dict(state), tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Resume state; ``weights_only=True``: a checkpoint file can hold data, never code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def load_trainable(adapted: Adapted, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in adapted.head + adapted.adapter:
            param.copy_(state[name].to(param.device, param.dtype))


def make_accelerator(settings: TrainerSettings):
    """Accelerate's state for this process. Without CUDA every process runs on CPU (gloo), so that
    ``torchrun`` on a CPU machine joins one group instead of N processes training alone."""
    from accelerate import Accelerator

    cpu = settings.device == "cpu" or not torch.cuda.is_available()
    return Accelerator(mixed_precision=settings.mixed_precision, cpu=cpu,
                       gradient_accumulation_steps=settings.grad_accum_steps)


def fit(adapted: Adapted, task: Task, splits: Mapping[str, Any], processor, settings: TrainerSettings, seed: int,
        checkpoint_dir: str | os.PathLike, tracker=None, artifacts_dir: str | os.PathLike | None = None,
        accelerator=None) -> dict[str, Any]:
    """Train, select the best epoch on validation, test that state; then let the task write its
    end-of-run outputs (``task.artifacts``) from that state into ``artifacts_dir``. Returns the run's numbers.
    With ``settings.epochs == 0`` nothing trains: the test split is scored once (``evaluate_only``)."""
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    checkpoint_dir = Path(checkpoint_dir)
    seed_everything(seed)
    accelerator = accelerator or make_accelerator(settings)
    if settings.epochs == 0:
        return evaluate_only(adapted, task, splits["test"], processor, settings, accelerator, tracker, artifacts_dir)
    per_device_batch = settings.per_device_batch_size(accelerator.num_processes)
    sampler = EpochSeededSampler(len(splits["train"]), seed)
    train_loader = DataLoader(splits["train"], batch_size=per_device_batch, sampler=sampler,
                              collate_fn=task.collate(processor, "train"), num_workers=settings.num_workers)
    eval_loaders = [DataLoader(splits[name], batch_size=settings.eval_batch_size, shuffle=False,
                               collate_fn=task.collate(processor, name), num_workers=settings.num_workers)
                    for name in ("val", "test")]
    optimizer = _optimizer(adapted, settings)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        adapted.model, optimizer, train_loader, *eval_loaders)

    # the schedule counts the updates this process makes (its loader is the sharded one)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum_steps)
    if settings.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, settings.max_steps_per_epoch)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = get_scheduler(settings.scheduler, optimizer, num_warmup_steps=int(settings.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    trainable = [p for _, p in adapted.head + adapted.adapter]

    history: list[dict[str, Any]] = []
    best_epoch, best_value, best_state = None, -math.inf, None
    start_epoch, step = 0, 0
    checkpoint = checkpoint_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        state = load_checkpoint(checkpoint)
        load_trainable(adapted, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history, best_epoch, best_value = state["history"], state["best_epoch"], state["best_value"]
        best_state, start_epoch, step = state["best_state"], state["epoch"] + 1, state["step"]
        accelerator.print(f"resuming from {checkpoint} after epoch {state['epoch'] + 1}")

    memory = MemoryTracker(accelerator.device)
    started = time.perf_counter()
    train_samples = sum(h.get("train_samples", 0) for h in history)
    train_time = sum(h.get("train_time_s", 0.0) for h in history)
    metric = task.selection_metric
    for epoch in range(start_epoch, settings.epochs):
        # Accelerate's loader passes its own epoch counter to the sampler: set it, or a resumed run reshuffles
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        else:
            sampler.set_epoch(epoch)
        model.train()
        epoch_start, losses, seen, updates = time.perf_counter(), [], 0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
                   disable=not (settings.progress_bar and accelerator.is_local_main_process),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)  # log files get a line every 30 s
        for batch in train_loader:
            if updates >= steps_per_epoch:
                break
            with accelerator.accumulate(model):
                loss = task.training_loss(model, batch)
                loss_value = loss.detach().float().item()  # the step's one host sync (NaN check, mean loss, bar)
                if settings.fail_on_nonfinite and not math.isfinite(loss_value):
                    raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch + 1}, step {step + 1}: "
                                             f"lower the learning rates (lr_adapter={settings.lr_adapter}, "
                                             f"lr_head={settings.lr_head}) or enable clipping")
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm:
                    accelerator.clip_grad_norm_(trainable, float(settings.max_grad_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss_value)
            seen += batch_examples(batch)
            if accelerator.sync_gradients:
                scheduler.step()
                updates += 1
                step += 1
                if not bar.disable:  # refresh=False: the bar redraws at its own interval, not on every step
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}",
                                    samples_per_s=f"{seen / max(time.perf_counter() - epoch_start, 1e-9):.1f}",
                                    refresh=False)
                bar.update(1)
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        train_samples += seen
        train_time += epoch_time
        val = evaluate(accelerator, model, val_loader, task)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "lr": scheduler.get_last_lr(), "val": val, "train_samples": seen, "train_time_s": epoch_time,
                  "optimizer_steps": step}
        if settings.test_every_epoch:
            record["test"] = evaluate(accelerator, model, test_loader, task)
        history.append(record)
        value = val[metric]
        # an undefined score (e.g. Pearson of constant predictions is NaN) never beats a defined one
        comparable = value if math.isfinite(value) else -math.inf
        if best_epoch is None or comparable > best_value:
            best_epoch, best_value = epoch + 1, comparable
            best_state = {k: v.cpu() for k, v in adapted.trainable_state_dict().items()}
        accelerator.print(f"epoch {epoch + 1}/{settings.epochs}: loss {record['train_loss']:.4f} val {metric} {value:.4f}"
                          + (f" test {record['test'][metric]:.4f}" if "test" in record else "")
                          + f" ({epoch_time:.1f}s)")
        if tracker is not None:
            tracker.log({"epoch": epoch + 1, "train/loss": record["train_loss"],
                         **{f"val/{k}": v for k, v in val.items()},
                         **{f"test/{k}": v for k, v in record.get("test", {}).items()}}, step=step)
        if settings.checkpoint_every_epoch and accelerator.is_main_process:
            save_checkpoint({"epoch": epoch, "step": step, "trainable": adapted.trainable_state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": rng_state(), "history": history, "best_epoch": best_epoch,
                             "best_value": best_value, "best_state": best_state}, checkpoint)

    peak = memory.report()
    # an epoch that scored test (test_every_epoch) did so on the very weights scored here: reuse, never score twice
    last_record, best_record = history[-1], history[best_epoch - 1]
    test_last = last_record["test"] if "test" in last_record else evaluate(accelerator, model, test_loader, task)
    if best_epoch == len(history):  # the last epoch is the best: same weights, same score
        test_at_best = test_last
    else:
        load_trainable(adapted, best_state)  # the artifacts below come from the best state too
        test_at_best = best_record["test"] if "test" in best_record else evaluate(accelerator, model, test_loader, task)
    artifacts = _artifacts(accelerator, model, task, artifacts_dir, tracker)
    return {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val": best_record["val"],
        "test_at_best": test_at_best,
        "test_last": test_last,
        "memory": peak,
        "timing": {"train_time_s": train_time, "loop_wall_s": time.perf_counter() - started,
                   "train_samples_per_s": train_samples / train_time if train_time else 0.0},
        "distributed": {"num_processes": accelerator.num_processes, "global_batch_size": settings.batch_size,
                        "per_device_batch_size": per_device_batch, "grad_accum_steps": settings.grad_accum_steps,
                        "optimizer_steps": step, "steps_per_epoch": steps_per_epoch,
                        "mixed_precision": settings.mixed_precision},
        "artifacts": artifacts,
        "best_state": best_state,
        "device": str(accelerator.device),
    }


def _artifacts(accelerator, model, task: Task, artifacts_dir, tracker) -> dict[str, str]:
    if artifacts_dir is None or not accelerator.is_main_process:
        return {}
    model.eval()
    with torch.no_grad():
        return task.artifacts(accelerator.unwrap_model(model), Path(artifacts_dir), tracker)


def evaluate_only(adapted: Adapted, task: Task, test_split, processor, settings: TrainerSettings, accelerator,
                  tracker=None, artifacts_dir=None) -> dict[str, Any]:
    """``trainer.epochs=0``: score the model as built (e.g. zero-shot) on the test split; nothing is
    trained or selected (``best_epoch`` 0, no validation). Returns what ``fit`` returns."""
    loader = DataLoader(test_split, batch_size=settings.eval_batch_size, shuffle=False,
                        collate_fn=task.collate(processor, "test"), num_workers=settings.num_workers)
    model, loader = accelerator.prepare(adapted.model, loader)
    memory, started = MemoryTracker(accelerator.device), time.perf_counter()
    test = evaluate(accelerator, model, loader, task)
    eval_time = time.perf_counter() - started
    accelerator.print(f"evaluation only (trainer.epochs=0): test {task.selection_metric} "
                      f"{test[task.selection_metric]:.4f} ({eval_time:.1f}s)")
    if tracker is not None:
        tracker.log({"epoch": 0, **{f"test/{k}": v for k, v in test.items()}}, step=0)
    return {
        "epochs": [], "best_epoch": 0, "best_val": {}, "test_at_best": test, "test_last": test,
        "memory": memory.report(),
        "timing": {"train_time_s": 0.0, "loop_wall_s": time.perf_counter() - started, "eval_time_s": eval_time,
                   "train_samples_per_s": 0.0},
        "distributed": {"num_processes": accelerator.num_processes, "global_batch_size": settings.batch_size,
                        "per_device_batch_size": None, "grad_accum_steps": settings.grad_accum_steps,
                        "optimizer_steps": 0, "steps_per_epoch": 0, "mixed_precision": settings.mixed_precision},
        "artifacts": _artifacts(accelerator, model, task, artifacts_dir, tracker),
        "best_state": adapted.trainable_state_dict(),
        "device": str(accelerator.device),
    }
