"""GLUE on the tiny model gives the numbers recorded before the task/trainer redesign (same seed → same
per-epoch losses and metrics, same test score, same parameter counts). Recorded at the commit named in
the JSON with the pre-redesign pipeline (``tests/data/golden/glue_tiny.json``)."""
from __future__ import annotations

import json

import pytest

from conftest import ROOT, compose_cfg, tiny_overrides

GOLDEN = json.loads((ROOT / "tests" / "data" / "golden" / "glue_tiny.json").read_text())


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['task']}-{c['method']}")
def test_glue_matches_the_metrics_recorded_before_the_redesign(tmp_path, case):
    from framework.pipeline import run

    result = run(compose_cfg(tiny_overrides(case["task"], case["method"]) + case["overrides"], tmp_path))
    got = [{"train_loss": e["train_loss"], "val": e["val"], "test": e.get("test")} for e in result.epochs]
    assert got == case["epochs"]  # exact: the same computation, not merely close
    assert result.best_epoch == case["best_epoch"]
    assert result.test_at_best == case["test_at_best"] and result.test_last == case["test_last"]
    assert result.params == case["params"]
