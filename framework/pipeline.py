"""One run from a composed config: validate → assemble (``framework.assembly``) → fit → write the result.

Everything checkable is checked before any training compute (trainer settings, names, data files,
block sizes against the model's layer shapes on a weightless skeleton, sequence length against the
position embeddings); such errors raise ``InputError`` and leave no result file. Errors during
training leave a result marked ``failed``; a completed result is never overwritten by a later error.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework import models, results
from framework.assembly import assemble
from framework.fingerprint import fingerprint, same_data
from framework.method import Adapted, Method, row_label
from framework.tasks.base import Task
from framework.trainer import CHECKPOINT_FILE, TrainerSettings

log = logging.getLogger(__name__)
BEST_STATE_FILE = "best_trainable.safetensors"


def _is_main_process() -> bool:
    """Under `accelerate launch`/`torchrun` every rank runs this; only rank 0 writes results and talks to W&B."""
    return os.environ.get("RANK", "0") == "0"


def _num_processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class InputError(ValueError):
    """Bad input found before any compute: the message names the value, why, and the valid choices."""


@dataclass
class Prepared:
    """Everything a run needs, built and checked before any compute."""

    method: Method
    task: Task
    tracker: Any
    settings: TrainerSettings
    seed: int
    processor: Any  # the model's tokenizer / image processor (None for a task that takes none)


def prepare(cfg: DictConfig) -> Prepared:
    """Instantiate and validate everything; raise ``InputError`` on bad input.

    Only errors that describe input are translated (config classes that validate themselves raise
    ``ValueError``; missing files ``FileNotFoundError``/``OSError``); a bug's ``TypeError`` or
    ``AttributeError`` propagates with its traceback.
    """
    try:
        seed = cfg.seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r} must be an integer")
        settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
        settings.per_device_batch_size(_num_processes())
        method: Method = instantiate(cfg.method, _convert_="all")
        task: Task = instantiate(cfg.task, _convert_="all")
        tracker = instantiate(cfg.tracker)
        task.validate()
        assemble(cfg, weights="meta", task=task, method=method, apply=False)  # the skeleton: checks, no compute
        _check_training(settings, method, task)
        task.check_data()
        processor = models.build_processor(cfg.model, task.processor_kind)  # loads files only: no compute
        task.check_processor(processor)
    except InstantiationException as err:  # a config class that validates itself on construction
        raise InputError(str(err.__cause__ or err)) from err
    except (ValueError, FileNotFoundError, OSError) as err:
        raise InputError(str(err)) from err
    return Prepared(method, task, tracker, settings, int(seed), processor)


def _check_training(settings: TrainerSettings, method: Method, task: Task) -> None:
    """Training needs a method that trains and a task with training data; evaluation only (epochs=0) needs neither,
    but it needs a head that is not new: a fresh head's weights are random, and their score is no result."""
    if settings.epochs == 0:
        if method.trains and task.head().fresh:
            raise ValueError(f"trainer.epochs=0 with method {method.name!r} would score task {task.name!r} with a new "
                             f"head whose weights are random (nothing trains it): set trainer.epochs >= 1, or evaluate "
                             f"a task that keeps the model's own head (instruction tasks, with method=zero_shot)")
        return
    if not method.trains:
        raise ValueError(f"method {method.name!r} trains nothing but trainer.epochs={settings.epochs}: set "
                         f"trainer.epochs=0 (evaluate only), or choose a method that trains")
    if not task.has_train_data:
        raise ValueError(f"task {task.name!r} has no training data (task.train is null) but trainer.epochs="
                         f"{settings.epochs}: set trainer.epochs=0 with method=zero_shot, or set task.train")


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain data, without Hydra's own node (present when composed with the API)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def identity(cfg: DictConfig, resolved: dict, method_name: str) -> tuple[str, Path]:
    """The run's id and result path: a function of the resolved config and the seed."""
    rid = results.run_id(resolved, cfg.model.name, method_name, cfg.task.name, cfg.seed)
    return rid, results.result_path(cfg.paths.results_dir, rid)


def _close_tracker(tracker, summary: dict | None, failed: bool) -> None:
    """Summary and finish of the tracker; its errors are logged, never turned into a failed run."""
    try:
        if summary is not None:
            tracker.summary(summary)
        tracker.finish(failed=failed)
    except Exception:  # noqa: BLE001 - the result file is the record; the mirror is best effort
        log.exception("the tracker failed to finish (the result file is complete)")


def run(cfg: DictConfig) -> results.RunResult:
    """Run one config and return its result; a completed result that already exists is returned as is (skip).

    One process at a time runs a given run: the main process holds the run's lock (``results.run_lock``, next
    to the result file) from the skip check to the checkpoint clean-up; a second one stops at once naming the
    holder's pid (``RunInProgressError``), or waits with ``wait_for_lock=true``."""
    prepared = prepare(cfg)
    resolved = resolved_config(cfg)
    rid, path = identity(cfg, resolved, prepared.method.describe()["name"])
    data_files = fingerprint(prepared.task.data_files())
    previous = _reusable(cfg, path, data_files)
    if previous is not None:
        return previous
    checkpoint_dir = Path(cfg.paths.checkpoint_dir) / rid
    if not _is_main_process():  # rank 0 holds the run's lock for the whole group
        return _execute(cfg, prepared, resolved, rid, path, checkpoint_dir, data_files)
    with results.run_lock(path, rid, wait=bool(cfg.get("wait_for_lock", False))):
        previous = _reusable(cfg, path, data_files)  # the holder we waited for may have completed it
        if previous is not None:
            return previous
        _check_checkpoint(checkpoint_dir / CHECKPOINT_FILE, data_files, bool(cfg.force))
        return _execute(cfg, prepared, resolved, rid, path, checkpoint_dir, data_files)


def _reusable(cfg: DictConfig, path: Path, data_files: dict[str, str]) -> results.RunResult | None:
    """The completed result at ``path`` when it may be reused: not forced, and made from the same data."""
    if cfg.force or not results.completed(path):
        return None
    previous = results.load_result(path)
    recorded = previous.provenance.get("data_files")
    if recorded is not None and not same_data(recorded, data_files):
        raise InputError(f"{path} holds a completed result of this config made from data files whose contents "
                         f"have changed since ({sorted(recorded)}); force=true reruns it and replaces that "
                         f"result, or set paths.results_dir to keep both")
    log.info("skip: a completed result exists at %s (force=true reruns)", path)
    return previous


def _check_checkpoint(checkpoint: Path, data_files: dict[str, str], force: bool) -> None:
    """A killed run resumes from its checkpoint only on the data it was trained on: different data is an
    ``InputError`` naming the files (before any compute); ``force=true`` discards the checkpoint instead."""
    if not checkpoint.exists():
        return
    from framework.checkpoint import checkpoint_data_files

    recorded = checkpoint_data_files(checkpoint)
    if recorded is not None and same_data(recorded, data_files):
        return
    if recorded is None:
        reason = "records no data fingerprints (it was written before checkpoints recorded them)"
    else:
        changed = sorted({p for p, digest in data_files.items() if digest not in recorded.values()}
                         | {p for p, digest in recorded.items() if digest not in data_files.values()})
        reason = f"was trained on other contents of {changed}"
    if force:
        log.warning("force=true: discarding %s, which %s; the run starts over", checkpoint, reason)
        checkpoint.unlink()
        return
    raise InputError(f"cannot resume from {checkpoint}: it {reason}, and an epoch trained on other data would "
                     f"stand in this run's result; force=true starts the run over (discarding the checkpoint), or "
                     f"restore the data")


def _execute(cfg: DictConfig, prepared: Prepared, resolved: dict, rid: str, path: Path, checkpoint_dir: Path,
             data_files: dict[str, str]) -> results.RunResult:
    """Build, fit and record one run (on the main process, under the run's lock). A failure is recorded as a
    ``failed`` result unless a completed one is there: a completed result is replaced only by a completed one."""
    method, task, tracker = prepared.method, prepared.task, prepared.tracker
    description = method.describe()
    main = _is_main_process()
    result = results.RunResult(run_id=rid, status="running", model=cfg.model.name, method=description["name"],
                               method_label=row_label(method, cfg.get("method_label")), task=cfg.task.name,
                               seed=prepared.seed, config=resolved, selection_metric=task.selection_metric,
                               provenance={**results.provenance(), "data_files": data_files})
    started = time.perf_counter()
    if not main:
        from framework.trackers import NullTracker

        tracker = NullTracker()
    tracker.start(run_name=rid.replace("/", "-"), config=resolved,
                  group=f"{cfg.task.name}/{cfg.model.name}/{description['name']}")
    try:
        processor = prepared.processor
        splits = task.splits(processor)
        result.task_details = task.describe()
        torch.manual_seed(prepared.seed)  # head and adapter initialisation depend on the seed
        adapted: Adapted = assemble(cfg, task=task, method=method).adapted
        result.params = {"trainable_excl_head": adapted.num_adapter_params(), "head": adapted.num_head_params(),
                         "trainable_total": adapted.num_adapter_params() + adapted.num_head_params(),
                         "total": models.count_parameters(adapted.model)}
        from framework.trainer import fit

        fitted = fit(adapted, task, splits, processor, prepared.settings, prepared.seed, checkpoint_dir, tracker,
                     artifacts_dir=Path(cfg.paths.results_dir) / "artifacts" / rid, data_files=data_files)
        result = replace(result, status="completed", epochs=fitted.epochs, best_epoch=fitted.best_epoch,
                         best_val=fitted.best_val, test_at_best=fitted.test_at_best, test_last=fitted.test_last,
                         memory=fitted.memory, timing={**fitted.timing, "wall_s": time.perf_counter() - started},
                         distributed=fitted.distributed, artifacts=fitted.artifacts,
                         provenance={**result.provenance, "device": fitted.device})
        if main:
            if prepared.settings.save_best and fitted.best_state:  # evaluation only with nothing trainable: no file
                from safetensors.torch import save_file

                checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in fitted.best_state.items()},
                          str(checkpoint_dir / BEST_STATE_FILE))
            results.write_result(path, result)
    except BaseException as err:
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}"
        result.timing["wall_s"] = time.perf_counter() - started
        if main and not results.completed(path):  # never over a completed result (a forced rerun that failed)
            results.write_result(path, result)
        _close_tracker(tracker, None, failed=True)
        raise
    if main:
        (checkpoint_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    _close_tracker(tracker, {"best_epoch": result.best_epoch, **{f"best_val/{k}": v for k, v in result.best_val.items()},
                             **{f"test_at_best/{k}": v for k, v in result.test_at_best.items()},
                             "params/trainable_excl_head": result.params["trainable_excl_head"],
                             "memory/peak_bytes": result.memory.get("peak_bytes")}, failed=False)
    metric = task.selection_metric
    selection = (f"best epoch {result.best_epoch}/{len(result.epochs)} | val {metric} {result.best_val[metric]:.4f}"
                 if result.epochs else "evaluation only (trainer.epochs=0)")
    log.info("summary %s: %s | test %s %.4f (last epoch %.4f) | %s trainable params excl. head | "
             "peak memory %.2f GiB (%s) | %.0f s", rid, selection, metric, result.test_at_best[metric],
             result.test_last[metric], f"{result.params['trainable_excl_head']:,}",
             result.memory["peak_bytes"] / 2**30, result.memory["kind"], result.timing["wall_s"])
    log.info("result: %s", path)
    return result
