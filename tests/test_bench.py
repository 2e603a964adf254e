"""The benchmark script runs end to end (--quick) and prints parseable, positive RATIO lines (no timing claims)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["c3a_vs_peft_c3a_time", "c3a_vs_lora_overhead_time", "c3a_vs_lora_peak_memory", "c3a_vs_lora_step_time"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc")
def test_bench_quick_prints_ratios():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "scripts" / "bench_c3a.py"), "--quick", "--device", "cpu", "--threads", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RATIO "):
            _, name, value = line.split()
            ratios[name] = float(value)
    assert set(REQUIRED) <= set(ratios), proc.stdout[-3000:]
    assert all(value > 0 for value in ratios.values()), ratios
