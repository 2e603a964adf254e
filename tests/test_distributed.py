"""Two processes on CPU (torchrun, gloo) train like one: same optimizer steps, same LR curve, one result.

``trainer.batch_size`` is the global batch: each of the two processes reads half of it per step.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, tiny_overrides


def _run_cli(root: Path, launcher: list[str]) -> dict:
    overrides = tiny_overrides() + ["trainer.epochs=2", "trainer.scheduler=linear", "trainer.warmup_ratio=0",
                                    "trainer.test_every_epoch=false", "trainer.device=auto", f"paths.root_dir={root}"]
    root.mkdir(parents=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, str(ROOT / "run.py"), *overrides], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = sorted((root / "results" / "runs").rglob("*.json"))  # exactly one process wrote
    return json.loads(path.read_text())


def test_two_cpu_processes_take_the_steps_and_lr_curve_of_one(tmp_path):
    single = _run_cli(tmp_path / "one", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    double = _run_cli(tmp_path / "two", torchrun)
    assert double["distributed"]["num_processes"] == 2 and single["distributed"]["num_processes"] == 1
    assert double["distributed"]["per_device_batch_size"] == single["distributed"]["per_device_batch_size"] // 2
    assert double["distributed"]["optimizer_steps"] == single["distributed"]["optimizer_steps"]
    assert [e["lr"] for e in double["epochs"]] == [e["lr"] for e in single["epochs"]]
    assert double["epochs"][-1]["lr"] == [0.0, 0.0], "a linear schedule ends at zero"
    assert double["epochs"][-1]["train_samples"] * 2 == single["epochs"][-1]["train_samples"]
