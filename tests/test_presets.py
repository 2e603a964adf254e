"""Every experiment preset composes and runs one optimizer step (on the tiny model, offline).

The Table 2 presets name RoBERTa from the Hub; the smoke run swaps in the config-built tiny RoBERTa
(`model=tiny-roberta` on the command line wins over a preset's model) and the shipped few-row TSVs, so
what is checked is everything else a preset sets: method, its hyperparameters, the per-task recipe.
"""
from __future__ import annotations

import pytest

from conftest import CONF, GLUE_DIRS, TEST_GLUE, compose_cfg

# the GLUE presets; every other family's presets are run by its own test module (test_instruct, test_image_task, ...)
GLUE_PRESET_DIRS = ("table2", "demo", "minilm")
PRESETS = sorted(str(p.relative_to(CONF / "experiment").with_suffix(""))
                 for d in GLUE_PRESET_DIRS for p in (CONF / "experiment" / d).rglob("*.yaml"))
TASKS = list(GLUE_DIRS)


@pytest.mark.parametrize("index,preset", list(enumerate(PRESETS)))
def test_preset_runs_one_step(tmp_path, index, preset):
    from framework.pipeline import run

    task = TASKS[index % len(TASKS)]  # spread the presets over all six tasks
    cfg = compose_cfg([f"experiment={preset}", "model=tiny-roberta", f"task={task}",
                       f"task.data_dir={TEST_GLUE / GLUE_DIRS[task]}", "task.val_size=4", "task.max_length=32",
                       "debug=fast", "trainer.max_steps_per_epoch=1"], tmp_path)
    result = run(cfg)
    assert result.status == "completed" and len(result.epochs) == 1
    assert result.config["trainer"]["max_steps_per_epoch"] == 1
    assert result.selection_metric in result.test_at_best
