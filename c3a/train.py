"""The training loop: train → validate every epoch → keep the best trainable state → test it.

One loop for every model, method and task: it sees an ``Adapted`` model (parameters split into head
and adapter groups) and a ``Task`` (splits, collate, loss, metrics) and nothing else. Each epoch ends
with a checkpoint (trainable state, optimizer, scheduler, RNG states, history), so rerunning a killed
run continues where it stopped and ends with the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from c3a.methods import Adapted
from c3a.tasks.base import Task

CHECKPOINT_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf: the run is recorded as failed."""


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def _split_batch(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return inputs, batch["labels"]


def evaluate(accelerator, model, loader, task: Task) -> dict[str, float]:
    """The task's metrics on one split (logits gathered across processes)."""
    model.eval()
    all_logits, all_labels = [], []
    with torch.no_grad():
        for batch in loader:
            inputs, labels = _split_batch(batch)
            logits = model(**inputs).logits.float()
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    logits = torch.cat(all_logits).numpy()
    labels = torch.cat(all_labels).numpy()
    return {k: float(v) for k, v in task.compute_metrics(logits, labels).items()}


def _optimizer(adapted: Adapted, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    groups = []
    for role, params, lr in (("head", adapted.head, cfg["lr_head"]), ("adapter", adapted.adapter, cfg["lr_adapter"])):
        if params:
            groups.append({"params": [p for _, p in params], "lr": float(lr), "name": role,
                           "weight_decay": float(cfg["weight_decay"])})
    if not groups:
        raise ValueError("the method left no trainable parameters")
    return torch.optim.AdamW(groups)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_trainable(adapted: Adapted, state: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in adapted.head + adapted.adapter:
            param.copy_(state[name].to(param.device, param.dtype))


def fit(adapted: Adapted, task: Task, splits: Mapping[str, Any], tokenizer, cfg: Mapping[str, Any], seed: int,
        checkpoint_dir: str | os.PathLike, tracker=None) -> dict[str, Any]:
    """Train, select the best epoch on validation, test that state. Returns the run's numbers."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    checkpoint_dir = Path(checkpoint_dir)
    seed_everything(seed)
    accelerator = Accelerator(mixed_precision=cfg["mixed_precision"], cpu=cfg["device"] == "cpu",
                              gradient_accumulation_steps=int(cfg["grad_accum_steps"]))
    collate = task.collate(tokenizer)
    sampler = EpochSeededSampler(len(splits["train"]), seed)
    train_loader = DataLoader(splits["train"], batch_size=int(cfg["batch_size"]), sampler=sampler,
                              collate_fn=collate, num_workers=int(cfg["num_workers"]))
    eval_loaders = {name: DataLoader(splits[name], batch_size=int(cfg["eval_batch_size"]), shuffle=False,
                                     collate_fn=collate, num_workers=int(cfg["num_workers"]))
                    for name in ("val", "test")}

    steps_per_epoch = math.ceil(len(train_loader) / int(cfg["grad_accum_steps"]))
    if cfg.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(cfg["max_steps_per_epoch"]))
    epochs = int(cfg["epochs"])
    total_steps = steps_per_epoch * epochs
    optimizer = _optimizer(adapted, cfg)
    scheduler = get_scheduler(cfg["scheduler"], optimizer, num_warmup_steps=int(cfg["warmup_ratio"] * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, train_loader, val_loader, test_loader = accelerator.prepare(
        adapted.model, optimizer, train_loader, eval_loaders["val"], eval_loaders["test"])
    trainable = [p for _, p in adapted.head + adapted.adapter]

    history: list[dict[str, Any]] = []
    best_epoch, best_value, best_state = None, -math.inf, None
    start_epoch, step = 0, 0
    checkpoint = checkpoint_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        _load_trainable(adapted, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history, best_epoch, best_value = state["history"], state["best_epoch"], state["best_value"]
        best_state, start_epoch, step = state["best_state"], state["epoch"] + 1, state["step"]
        accelerator.print(f"resuming from {checkpoint} after epoch {state['epoch']}")

    memory = MemoryTracker(accelerator.device)
    started = time.perf_counter()
    train_samples, train_time = sum(h.get("train_samples", 0) for h in history), sum(h.get("train_time_s", 0.0) for h in history)
    for epoch in range(start_epoch, epochs):
        # Accelerate's loader passes its own epoch counter to the sampler: set it, or a resumed run reshuffles
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        else:
            sampler.set_epoch(epoch)
        model.train()
        epoch_start, losses, seen = time.perf_counter(), [], 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not (cfg["progress_bar"] and accelerator.is_local_main_process),
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)  # log files get a line every 30 s
        updates = 0
        for batch in train_loader:
            if updates >= steps_per_epoch:
                break
            inputs, labels = _split_batch(batch)
            with accelerator.accumulate(model):
                loss = task.loss(model(**inputs).logits, labels)
                if cfg["fail_on_nonfinite"] and not torch.isfinite(loss.detach()).all():
                    raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                                             f"lower the learning rates (lr_adapter={cfg['lr_adapter']}, "
                                             f"lr_head={cfg['lr_head']}) or enable clipping")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg["max_grad_norm"]:
                    accelerator.clip_grad_norm_(trainable, float(cfg["max_grad_norm"]))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach().float().item())
            seen += labels.shape[0]
            if accelerator.sync_gradients:
                scheduler.step()
                updates += 1
                step += 1
                elapsed = time.perf_counter() - epoch_start
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}",
                                samples_per_s=f"{seen / max(elapsed, 1e-9):.1f}")
        bar.close()
        epoch_time = time.perf_counter() - epoch_start
        train_samples += seen
        train_time += epoch_time
        val = evaluate(accelerator, model, val_loader, task)
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                  "lr": scheduler.get_last_lr(), "val": val, "train_samples": seen, "train_time_s": epoch_time}
        if cfg["test_every_epoch"]:
            record["test"] = evaluate(accelerator, model, test_loader, task)
        history.append(record)
        value = val[task.selection_metric]
        # an undefined score (e.g. Pearson of constant predictions is NaN) never beats a defined one
        comparable = value if math.isfinite(value) else -math.inf
        if comparable > best_value or best_epoch is None:
            best_epoch, best_value = epoch + 1, comparable
            best_state = {k: v.cpu() for k, v in adapted.trainable_state_dict().items()}
        accelerator.print(f"epoch {epoch + 1}/{epochs}: loss {record['train_loss']:.4f} "
                          f"val {task.selection_metric} {value:.4f}"
                          + (f" test {record['test'][task.selection_metric]:.4f}" if "test" in record else "")
                          + f" ({epoch_time:.1f}s)")
        if tracker is not None:
            tracker.log({"epoch": epoch + 1, "train/loss": record["train_loss"],
                         **{f"val/{k}": v for k, v in val.items()},
                         **{f"test/{k}": v for k, v in record.get("test", {}).items()}}, step=step)
        if cfg["checkpoint_every_epoch"] and accelerator.is_main_process:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            _atomic_torch_save({"epoch": epoch, "step": step, "trainable": adapted.trainable_state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "rng": rng_state(), "history": history, "best_epoch": best_epoch,
                                "best_value": best_value, "best_state": best_state}, checkpoint)

    peak = memory.report()
    test_last = evaluate(accelerator, model, test_loader, task)
    if best_epoch == len(history):  # the last epoch is the best: same weights, same score
        test_at_best = test_last
    else:
        _load_trainable(adapted, best_state)
        test_at_best = evaluate(accelerator, model, test_loader, task)
    best_record = history[best_epoch - 1]
    return {
        "epochs": history,
        "best_epoch": best_epoch,
        "best_val": best_record["val"],
        "test_at_best": test_at_best,
        "test_last": test_last,
        "memory": peak,
        "timing": {"train_time_s": train_time, "loop_wall_s": time.perf_counter() - started,
                   "train_samples_per_s": train_samples / train_time if train_time else 0.0},
        "best_state": best_state,
        "device": str(accelerator.device),
    }
