"""Zero-shot evaluation of an instruction task: the untuned model on the task's test sets.

Table 4's "Zero-shot" rows, and quick checks of a pretrained chat model (no training, no adapter):

    python scripts/zero_shot.py model=smollm2 task=gsm8k-zeroshot
    python scripts/zero_shot.py model=llama3-8b task=math task.test.math.path=/data/MATH_test.jsonl

Same config groups as run.py (model, task, trainer.eval_batch_size, task.max_eval_samples, ...).
Writes ``<results_dir>/zero_shot/<task>/<model>.json``: metrics, sizes, wall time, the task's
description and its first generations.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402


def evaluate_zero_shot(cfg: DictConfig) -> dict:
    """Build the task and the untuned model from ``cfg``, score the test split, write and return the record."""
    import torch
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from framework import models
    from framework.trainer import TrainerSettings, evaluate, make_accelerator

    task = instantiate(cfg.task, _convert_="all")
    if not hasattr(task, "test_split"):
        raise ValueError(f"task {cfg.task.name!r} is not an instruction task (framework.tasks.instruct)")
    task.validate()
    models.check_source(cfg.model)
    task.check_data()
    started = time.perf_counter()
    processor = models.build_processor(cfg.model, task.processor_kind)
    test = task.test_split(processor)
    torch.manual_seed(int(cfg.seed))
    model = models.build_model(cfg.model, task.model_kind, task.head())
    settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
    accelerator = make_accelerator(settings)
    loader = DataLoader(test, batch_size=settings.eval_batch_size, shuffle=False,
                        collate_fn=task.collate(processor, "test"))
    model, loader = accelerator.prepare(model, loader)
    eval_started = time.perf_counter()
    metrics = evaluate(accelerator, model, loader, task)
    record = {"model": cfg.model.name, "task": cfg.task.name, "method": "zero-shot", "metrics": metrics,
              "timing": {"wall_s": time.perf_counter() - started, "eval_s": time.perf_counter() - eval_started},
              "device": str(accelerator.device), "task_details": task.describe(), "samples": task.samples}
    if accelerator.is_main_process:
        path = Path(cfg.paths.results_dir) / "zero_shot" / cfg.task.name / f"{cfg.model.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
        record["path"] = str(path)
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    record = evaluate_zero_shot(cfg)
    print(json.dumps({k: record[k] for k in ("model", "task", "metrics", "timing")}, indent=1))
    print(f"written: {record.get('path')}")


if __name__ == "__main__":
    main()
