"""One run from a composed config: validate → build → adapt → fit → write the result.

Everything checkable is checked before any training compute (names, data paths, block sizes against
the model's layer shapes on a weightless skeleton); such errors raise ``InputError`` and leave no
result file. Errors during training leave a result marked ``failed``.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from c3a import models, results
from c3a.methods import Adapted, Method
from c3a.tasks.base import Task

log = logging.getLogger(__name__)


def _is_main_process() -> bool:
    """Under `accelerate launch` every rank runs this; only rank 0 writes results and talks to W&B."""
    return os.environ.get("RANK", "0") == "0"


class InputError(ValueError):
    """Bad input found before any compute: the message names the value, why, and the valid choices."""


def _skeleton(model_cfg: DictConfig, head) -> torch.nn.Module:
    """The model's modules without weights (meta device): enough to check a method against layer shapes."""
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(models.model_config(model_cfg, head))


def prepare(cfg: DictConfig) -> tuple[Method, Task, Any]:
    """Instantiate and validate method, task and logger; raise ``InputError`` on anything wrong.

    Reading the data (not tokenising it) is part of this: a malformed file is bad input, not a failed run.
    """
    try:
        method: Method = instantiate(cfg.method, _convert_="all")
        task: Task = instantiate(cfg.task, _convert_="all")
        tracker = instantiate(cfg.logger)
        task.validate()
        task.check_data()
        models.check_source(cfg.model)
        method.validate(_skeleton(cfg.model, task.head()), list(cfg.model.head_modules))
    except InstantiationException as err:  # a config class that validates itself on construction
        raise InputError(str(err.__cause__ or err)) from err
    except (ValueError, FileNotFoundError, OSError, TypeError) as err:
        raise InputError(str(err)) from err
    return method, task, tracker


def resolved_config(cfg: DictConfig) -> dict:
    """The run's config as plain data, without Hydra's own node (present when composed with the API)."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def identity(cfg: DictConfig, resolved: dict, method_name: str) -> tuple[str, Path]:
    """The run's id and result path: a function of the resolved config and the seed."""
    rid = results.run_id(resolved, cfg.model.name, method_name, cfg.task.name, cfg.seed)
    return rid, results.result_path(cfg.paths.results_dir, rid)


def run(cfg: DictConfig) -> results.RunResult:
    """Run one config and return its result; a completed result that already exists is returned as is (skip)."""
    method, task, tracker = prepare(cfg)
    resolved = resolved_config(cfg)
    description = method.describe()
    rid, path = identity(cfg, resolved, description["name"])
    if results.completed(path) and not cfg.force:
        log.info("skip: a completed result exists at %s (force=true reruns)", path)
        return results.load_result(path)
    result = results.RunResult(run_id=rid, status="running", model=cfg.model.name, method=description["name"],
                               method_label=description.get("label", description["name"]), task=cfg.task.name,
                               seed=int(cfg.seed), config=resolved, selection_metric=task.selection_metric,
                               provenance=results.provenance())
    checkpoint_dir = Path(cfg.paths.checkpoint_dir) / rid
    started = time.perf_counter()
    if not _is_main_process():
        from c3a.tracking import NullLogger

        tracker = NullLogger()
    tracker.start(run_name=rid.replace("/", "-"), config=resolved, group=f"{cfg.task.name}/{cfg.model.name}/{description['name']}")
    try:
        head = task.head()
        tokenizer = models.build_tokenizer(cfg.model)
        splits = task.splits(tokenizer)
        result.split = task.describe()
        torch.manual_seed(int(cfg.seed))  # head and adapter initialisation depend on the seed
        model = models.build_model(cfg.model, head)
        adapted: Adapted = method.apply(model, list(cfg.model.head_modules))
        result.params = {"trainable_excl_head": adapted.num_adapter_params(), "head": adapted.num_head_params(),
                         "trainable_total": adapted.num_adapter_params() + adapted.num_head_params(),
                         "total": models.count_parameters(adapted.model)}
        from c3a.train import fit

        out = fit(adapted, task, splits, tokenizer, cfg.trainer, int(cfg.seed), checkpoint_dir, tracker)
        best_state = out.pop("best_state")
        result.provenance["device"] = out.pop("device")
        for key, value in out.items():
            setattr(result, key, value)
        result.timing["wall_s"] = time.perf_counter() - started
        result.status = "completed"
        if cfg.trainer.save_best and _is_main_process():
            from safetensors.torch import save_file

            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(checkpoint_dir / "best_trainable.safetensors"))
        if _is_main_process():
            results.write_result(path, result)
            (checkpoint_dir / "state.pt").unlink(missing_ok=True)
        tracker.summary({"best_epoch": result.best_epoch, **{f"best_val/{k}": v for k, v in result.best_val.items()},
                         **{f"test_at_best/{k}": v for k, v in result.test_at_best.items()},
                         "params/trainable_excl_head": result.params["trainable_excl_head"],
                         "memory/peak_bytes": result.memory.get("peak_bytes")})
        tracker.finish()
        metric = task.selection_metric
        log.info("summary %s: best epoch %d/%d | val %s %.4f | test %.4f (last epoch %.4f) | "
                 "%s trainable params excl. head | peak memory %.2f GiB (%s) | %.0f s",
                 rid, result.best_epoch, len(result.epochs), metric, result.best_val[metric],
                 result.test_at_best[metric], result.test_last[metric], f"{result.params['trainable_excl_head']:,}",
                 result.memory["peak_bytes"] / 2**30, result.memory["kind"], result.timing["wall_s"])
        log.info("result: %s", path)
        return result
    except BaseException as err:
        result.status = "failed"
        result.error = f"{type(err).__name__}: {err}"
        result.timing["wall_s"] = time.perf_counter() - started
        if _is_main_process():
            results.write_result(path, result)
        tracker.finish(failed=True)
        raise
