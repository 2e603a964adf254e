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


def _declared_rows():
    from framework.paper_tables import load_all

    return [(spec.name, row) for spec in load_all() for row in spec.rows if row.preset]


@pytest.mark.parametrize("table,row", _declared_rows(), ids=lambda x: x if isinstance(x, str) else f"{x.model}-{x.label}")
def test_every_paper_preset_labels_its_runs_as_the_table_row(table, row):
    """Tables group runs by their recorded label: a preset whose runs carry another label than its row would put
    them beside the paper's row, not in it (and miss its memory figure)."""
    from hydra.utils import instantiate

    from framework.paper_tables import compose_row
    from framework.method import row_label

    cfg = compose_row(row)
    assert row_label(instantiate(cfg.method, _convert_="all"), cfg.get("method_label")) == row.label, table


def _makefile_sweeps() -> list[tuple[str, list[str]]]:
    """Every combination of every `run.py -m` line in the Makefile, its $(VARIABLES) given placeholder values."""
    import itertools
    import re
    import shlex

    text = (CONF.parent / "Makefile").read_text()
    variables = dict(re.findall(r"^([A-Z0-9_]+) *\??= *(.*)$", text, re.MULTILINE))
    combos = []
    for line in (l for l in text.splitlines() if "run.py -m" in l):
        line = re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: variables.get(m.group(1)) or f"/placeholder/{m.group(1)}", line)
        choices = []
        for arg in shlex.split(line.split("run.py -m", 1)[1]):
            key, _, values = arg.partition("=")
            choices.append([f"{key}={v}" for v in values.split(",")] if "," in values else [arg])
        combos += [(line.strip()[:60], list(c)) for c in itertools.product(*choices)]
    return combos


@pytest.mark.parametrize("line,overrides", _makefile_sweeps(), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_makefile_sweep_composes(line, overrides):
    """A sweep whose overrides do not fit one of its combinations fails only when the cluster reaches it."""
    from framework.compose import compose_config

    cfg = compose_config(overrides)
    assert cfg.task.name and cfg.method.name
