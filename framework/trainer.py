"""The training loop: train → validate every epoch → keep the best trainable state → test it.

One loop for every model, method and task. It sees an ``Adapted`` model (parameters split into head
and adapter groups) and a ``Task``; the task turns a batch into a loss, an evaluation batch into
outputs and the gathered outputs of a split into metrics, so the loop never looks inside a batch or a
model output. The loop owns evaluation: it iterates the split, gathers each batch's outputs across
processes and keeps the best state's test outputs for the task's end-of-run artifacts. Each epoch ends
with a checkpoint (trainable state, optimizer, scheduler, RNG states, history, the data fingerprints it
trained on) that loads with ``torch.load(weights_only=True)``, so rerunning a killed run continues where
it stopped and ends with the numbers of an uninterrupted run.

``fit`` reads top to bottom: ``_setup`` → ``_resume`` → per epoch ``_train_epoch``, ``_score_epoch``,
``_select``, ``_report_epoch``, ``_save_progress`` → ``_final_test`` → ``_artifacts`` → ``Fitted``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from framework.checkpoint import CHECKPOINT_FILE, load_checkpoint, load_trainable, save_checkpoint
from framework.method import Adapted
from framework.rng import rng_state, seed_everything, set_rng_state
from framework.tasks.base import Task
from framework.trainer_settings import TrainerSettings


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


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class Evaluation:
    """One split scored: its metrics, and the gathered per-batch outputs they were reduced from (what the
    task's ``artifacts`` receive for the best state's test pass)."""

    metrics: dict[str, float]
    outputs: list


def evaluate(accelerator, model, loader, task: Task, processor) -> Evaluation:
    """Score one split in eval mode (no dropout) without gradients: the task's ``eval_step`` per batch on the
    plain model, gathered across processes (``gather_for_metrics`` drops the last batch's padding), then
    the task's ``metrics`` over every gathered output."""
    model.eval()
    plain = accelerator.unwrap_model(model)
    outputs = []
    with torch.no_grad():
        for batch in loader:
            outputs.append(accelerator.gather_for_metrics(task.eval_step(plain, batch, processor)))
        metrics = task.metrics(outputs)
    return Evaluation({k: float(v) for k, v in metrics.items()}, outputs)


def _on_cpu(outputs):
    """Gathered outputs with every tensor on the CPU (kept across epochs and in checkpoints)."""
    from accelerate.utils import send_to_device

    return send_to_device(outputs, "cpu")


def make_accelerator(settings: TrainerSettings):
    """Accelerate's state for this process. Without CUDA every process runs on CPU (gloo), so that
    ``torchrun`` on a CPU machine joins one group instead of N processes training alone."""
    from accelerate import Accelerator

    cpu = settings.device == "cpu" or not torch.cuda.is_available()
    return Accelerator(mixed_precision=settings.mixed_precision, cpu=cpu,
                       gradient_accumulation_steps=settings.grad_accum_steps)


def _optimizer(adapted: Adapted, settings: TrainerSettings) -> torch.optim.Optimizer:
    groups = []
    for role, params, lr in (("head", adapted.head, settings.lr_head), ("adapter", adapted.adapter, settings.lr_adapter)):
        if params:
            groups.append({"params": [p for _, p in params], "lr": float(lr), "name": role,
                           "weight_decay": float(settings.weight_decay)})
    if not groups:
        raise ValueError("the method left no trainable parameters")
    return torch.optim.AdamW(groups)


# ------------------------------------------------------------------------------------------------ the run's state
@dataclass
class Loop:
    """The prepared pieces of one training run (model, loaders, optimizer and schedule)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: EpochSeededSampler
    train_loader: Any
    val_loader: Any
    test_loader: Any
    per_device_batch: int
    steps_per_epoch: int
    trainable: list[torch.nn.Parameter]


@dataclass
class Progress:
    """Where a run stands after its last finished epoch: what a checkpoint saves and a resume restores."""

    epochs_done: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: Optional[int] = None
    best_value: float = -math.inf
    best_state: Optional[dict[str, torch.Tensor]] = None
    best_test_outputs: Optional[list] = None  # the best epoch's gathered test outputs (test_every_epoch)


@dataclass
class Trained:
    """One epoch's training pass: mean loss, examples seen, seconds."""

    loss: Optional[float]
    samples: int
    seconds: float


@dataclass
class Fitted:
    """What one fit measured, built in one place (``_fitted``); the pipeline records it in the run's result."""

    epochs: list[dict[str, Any]]
    best_epoch: int
    best_val: dict[str, float]
    test_at_best: dict[str, float]
    test_last: dict[str, float]
    memory: dict[str, Any]
    timing: dict[str, float]
    distributed: dict[str, Any]
    artifacts: dict[str, str]
    best_state: Optional[dict[str, torch.Tensor]]
    device: str


# ------------------------------------------------------------------------------------------------ fit
def fit(adapted: Adapted, task: Task, splits: Mapping[str, Any], processor, settings: TrainerSettings, seed: int,
        checkpoint_dir: str | os.PathLike, tracker=None, artifacts_dir: str | os.PathLike | None = None,
        accelerator=None, data_files: Optional[Mapping[str, str]] = None) -> Fitted:
    """Train, select the best epoch on validation, test that state; then let the task write its
    end-of-run outputs (``task.artifacts``) from that state and its test outputs into ``artifacts_dir``.
    ``data_files`` (fingerprints of the task's data) are recorded in every checkpoint, so a resume can be
    refused when the data changed (``framework.pipeline``). With ``settings.epochs == 0`` nothing trains:
    the test split is scored once (``evaluate_only``)."""
    seed_everything(seed)
    accelerator = accelerator or make_accelerator(settings)
    if settings.epochs == 0:
        return evaluate_only(adapted, task, splits["test"], processor, settings, accelerator, tracker, artifacts_dir)
    loop = _setup(adapted, task, splits, processor, settings, seed, accelerator)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
    progress = _resume(loop, adapted, checkpoint) if checkpoint.exists() else Progress()
    memory, started = MemoryTracker(accelerator.device), time.perf_counter()
    for epoch in range(progress.epochs_done, settings.epochs):
        trained = _train_epoch(loop, task, settings, epoch, progress)
        record, test = _score_epoch(loop, task, processor, settings, epoch, trained, progress.step)
        progress.history.append(record)
        _select(progress, adapted, task, record, test)
        _report_epoch(loop, task, settings, record, tracker, progress.step)
        if settings.checkpoint_every_epoch and accelerator.is_main_process:
            _save_progress(progress, loop, adapted, epoch, checkpoint, data_files)
    peak = memory.report()
    test_last, test_at_best, best_outputs = _final_test(loop, adapted, task, processor, progress)
    artifacts = _artifacts(accelerator, loop.model, task, artifacts_dir, tracker, best_outputs)
    train_time = sum(h.get("train_time_s", 0.0) for h in progress.history)
    train_samples = sum(h.get("train_samples", 0) for h in progress.history)
    timing = {"train_time_s": train_time, "loop_wall_s": time.perf_counter() - started,
              "train_samples_per_s": train_samples / train_time if train_time else 0.0}
    return _fitted(accelerator, settings, history=progress.history, best_epoch=progress.best_epoch,
                   best_val=progress.history[progress.best_epoch - 1]["val"], test_at_best=test_at_best,
                   test_last=test_last, memory=peak, timing=timing, per_device_batch=loop.per_device_batch,
                   optimizer_steps=progress.step, steps_per_epoch=loop.steps_per_epoch, artifacts=artifacts,
                   best_state=progress.best_state)


def _setup(adapted: Adapted, task: Task, splits: Mapping[str, Any], processor, settings: TrainerSettings, seed: int,
           accelerator) -> Loop:
    """Loaders (a seeded shuffle for train), the optimizer and the schedule, prepared by Accelerate."""
    from transformers import get_scheduler

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
    return Loop(accelerator, model, optimizer, scheduler, sampler, train_loader, val_loader, test_loader,
                per_device_batch, steps_per_epoch, [p for _, p in adapted.head + adapted.adapter])


def _resume(loop: Loop, adapted: Adapted, checkpoint: Path) -> Progress:
    """Restore a killed run after its last finished epoch: weights, optimizer, schedule, RNGs, history, best."""
    state = load_checkpoint(checkpoint)
    load_trainable(adapted, state["trainable"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    loop.accelerator.print(f"resuming from {checkpoint} after epoch {state['epoch'] + 1}")
    return Progress(epochs_done=state["epoch"] + 1, step=state["step"], history=state["history"],
                    best_epoch=state["best_epoch"], best_value=state["best_value"], best_state=state["best_state"],
                    best_test_outputs=state.get("best_test_outputs"))


def _train_epoch(loop: Loop, task: Task, settings: TrainerSettings, epoch: int, progress: Progress) -> Trained:
    """One pass over the training data (at most ``steps_per_epoch`` updates), counting steps in ``progress``."""
    from tqdm.auto import tqdm

    accelerator, model, optimizer, scheduler = loop.accelerator, loop.model, loop.optimizer, loop.scheduler
    # Accelerate's loader passes its own epoch counter to the sampler: set it, or a resumed run reshuffles
    if hasattr(loop.train_loader, "set_epoch"):
        loop.train_loader.set_epoch(epoch)
    else:
        loop.sampler.set_epoch(epoch)
    model.train()
    epoch_start, losses, seen, updates = time.perf_counter(), [], 0, 0
    bar = tqdm(total=loop.steps_per_epoch, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
               disable=not (settings.progress_bar and accelerator.is_local_main_process),
               mininterval=0.5 if sys.stderr.isatty() else 30.0)  # log files get a line every 30 s
    for batch in loop.train_loader:
        if updates >= loop.steps_per_epoch:
            break
        with accelerator.accumulate(model):
            loss = task.training_loss(model, batch)
            loss_value = loss.detach().float().item()  # the step's one host sync (NaN check, mean loss, bar)
            if settings.fail_on_nonfinite and not math.isfinite(loss_value):
                raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch + 1}, step {progress.step + 1}: "
                                         f"lower the learning rates (lr_adapter={settings.lr_adapter}, "
                                         f"lr_head={settings.lr_head}) or enable clipping")
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm:
                accelerator.clip_grad_norm_(loop.trainable, float(settings.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss_value)
        seen += batch_examples(batch)
        if accelerator.sync_gradients:
            scheduler.step()
            updates += 1
            progress.step += 1
            if not bar.disable:  # refresh=False: the bar redraws at its own interval, not on every step
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{scheduler.get_last_lr()[-1]:.2e}",
                                samples_per_s=f"{seen / max(time.perf_counter() - epoch_start, 1e-9):.1f}",
                                refresh=False)
            bar.update(1)
    bar.close()
    return Trained(float(np.mean(losses)) if losses else None, seen, time.perf_counter() - epoch_start)


def _score_epoch(loop: Loop, task: Task, processor, settings: TrainerSettings, epoch: int, trained: Trained,
                 step: int) -> tuple[dict[str, Any], Optional[Evaluation]]:
    """The epoch's record: its training numbers, validation and (``test_every_epoch``) test; and the test pass."""
    val = evaluate(loop.accelerator, loop.model, loop.val_loader, task, processor)
    record = {"epoch": epoch + 1, "train_loss": trained.loss, "lr": loop.scheduler.get_last_lr(), "val": val.metrics,
              "train_samples": trained.samples, "train_time_s": trained.seconds, "optimizer_steps": step}
    test = None
    if settings.test_every_epoch:
        test = evaluate(loop.accelerator, loop.model, loop.test_loader, task, processor)
        record["test"] = test.metrics
    return record, test


def _select(progress: Progress, adapted: Adapted, task: Task, record: dict[str, Any],
            test: Optional[Evaluation]) -> None:
    """Keep the epoch's trainable state (and its test outputs) when its validation score is the best so far."""
    value = record["val"][task.selection_metric]
    # an undefined score (e.g. Pearson of constant predictions is NaN) never beats a defined one
    comparable = value if math.isfinite(value) else -math.inf
    if progress.best_epoch is None or comparable > progress.best_value:
        progress.best_epoch, progress.best_value = record["epoch"], comparable
        progress.best_state = {k: v.cpu() for k, v in adapted.trainable_state_dict().items()}
        progress.best_test_outputs = _on_cpu(test.outputs) if test is not None else None
    progress.epochs_done = record["epoch"]


def _report_epoch(loop: Loop, task: Task, settings: TrainerSettings, record: dict[str, Any], tracker,
                  step: int) -> None:
    metric = task.selection_metric
    loop.accelerator.print(f"epoch {record['epoch']}/{settings.epochs}: loss {record['train_loss']:.4f} val {metric} "
                           f"{record['val'][metric]:.4f}"
                           + (f" test {record['test'][metric]:.4f}" if "test" in record else "")
                           + f" ({record['train_time_s']:.1f}s)")
    if tracker is not None:
        tracker.log({"epoch": record["epoch"], "train/loss": record["train_loss"],
                     **{f"val/{k}": v for k, v in record["val"].items()},
                     **{f"test/{k}": v for k, v in record.get("test", {}).items()}}, step=step)


def _save_progress(progress: Progress, loop: Loop, adapted: Adapted, epoch: int, checkpoint: Path,
                   data_files: Optional[Mapping[str, str]]) -> None:
    save_checkpoint({"epoch": epoch, "step": progress.step, "trainable": adapted.trainable_state_dict(),
                     "optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict(),
                     "rng": rng_state(), "history": progress.history, "best_epoch": progress.best_epoch,
                     "best_value": progress.best_value, "best_state": progress.best_state,
                     "best_test_outputs": progress.best_test_outputs,
                     "data_files": dict(data_files) if data_files is not None else None}, checkpoint)


def _final_test(loop: Loop, adapted: Adapted, task: Task, processor,
                progress: Progress) -> tuple[dict[str, float], dict[str, float], Optional[list]]:
    """``test_last`` and ``test_at_best`` (the best state is loaded afterwards, for the artifacts too), and the
    best state's test outputs. An epoch that scored test (test_every_epoch) did so on the very weights
    scored here: its scores and outputs are reused, never computed twice."""
    history, best_epoch = progress.history, progress.best_epoch
    last_record, best_record = history[-1], history[best_epoch - 1]
    last = None if "test" in last_record else evaluate(loop.accelerator, loop.model, loop.test_loader, task, processor)
    test_last = last_record["test"] if last is None else last.metrics
    if best_epoch == len(history):  # the last epoch is the best: same weights, same score
        return test_last, test_last, progress.best_test_outputs if last is None else last.outputs
    load_trainable(adapted, progress.best_state)
    if "test" in best_record:
        return test_last, best_record["test"], progress.best_test_outputs
    best = evaluate(loop.accelerator, loop.model, loop.test_loader, task, processor)
    return test_last, best.metrics, best.outputs


def _artifacts(accelerator, model, task: Task, artifacts_dir, tracker, test_outputs: Optional[list]) -> dict[str, str]:
    if artifacts_dir is None or not accelerator.is_main_process:
        return {}
    model.eval()
    with torch.no_grad():
        return task.artifacts(accelerator.unwrap_model(model), Path(artifacts_dir), tracker, test_outputs or [])


def _fitted(accelerator, settings: TrainerSettings, *, history, best_epoch, best_val, test_at_best, test_last,
            memory, timing, per_device_batch, optimizer_steps, steps_per_epoch, artifacts, best_state) -> Fitted:
    return Fitted(epochs=history, best_epoch=best_epoch, best_val=best_val, test_at_best=test_at_best,
                  test_last=test_last, memory=memory, timing=timing,
                  distributed={"num_processes": accelerator.num_processes, "global_batch_size": settings.batch_size,
                               "per_device_batch_size": per_device_batch, "grad_accum_steps": settings.grad_accum_steps,
                               "optimizer_steps": optimizer_steps, "steps_per_epoch": steps_per_epoch,
                               "mixed_precision": settings.mixed_precision},
                  artifacts=artifacts, best_state=best_state, device=str(accelerator.device))


def evaluate_only(adapted: Adapted, task: Task, test_split, processor, settings: TrainerSettings, accelerator,
                  tracker=None, artifacts_dir=None) -> Fitted:
    """``trainer.epochs=0``: score the model as built (e.g. zero-shot) on the test split; nothing is
    trained or selected (``best_epoch`` 0, no validation)."""
    loader = DataLoader(test_split, batch_size=settings.eval_batch_size, shuffle=False,
                        collate_fn=task.collate(processor, "test"), num_workers=settings.num_workers)
    model, loader = accelerator.prepare(adapted.model, loader)
    memory, started = MemoryTracker(accelerator.device), time.perf_counter()
    test = evaluate(accelerator, model, loader, task, processor)
    eval_time = time.perf_counter() - started
    accelerator.print(f"evaluation only (trainer.epochs=0): test {task.selection_metric} "
                      f"{test.metrics[task.selection_metric]:.4f} ({eval_time:.1f}s)")
    if tracker is not None:
        tracker.log({"epoch": 0, **{f"test/{k}": v for k, v in test.metrics.items()}}, step=0)
    peak = memory.report()
    timing = {"train_time_s": 0.0, "loop_wall_s": time.perf_counter() - started, "eval_time_s": eval_time,
              "train_samples_per_s": 0.0}
    artifacts = _artifacts(accelerator, model, task, artifacts_dir, tracker, test.outputs)
    return _fitted(accelerator, settings, history=[], best_epoch=0, best_val={}, test_at_best=test.metrics,
                   test_last=test.metrics, memory=peak, timing=timing, per_device_batch=None, optimizer_steps=0,
                   steps_per_epoch=0, artifacts=artifacts, best_state=adapted.trainable_state_dict())
