"""`make memory` on CPU: every row is measured in its own process, written as CSV, with ratios to LoRA."""
from __future__ import annotations

import csv
import subprocess
import sys

from conftest import ROOT


def test_memory_script_writes_rows_and_ratios(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "measure_memory.py"), "--models", "tiny-roberta",
                           "--batch-size", "2", "--seq-len", "16", "--steps", "1", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "memory_cpu.csv")))
    assert [r["method_label"] for r in rows] == ["LoRA r=8", "C3A b=6"]
    assert all(int(r["peak_bytes"]) > 0 and r["device"] == "cpu" for r in rows)
    lora = next(r for r in rows if r["method"] == "lora")
    assert float(lora["ratio_to_lora"]) == 1.0
    ratios = [line.split() for line in proc.stdout.splitlines() if line.startswith("RATIO ")]
    assert len(ratios) == 2 and all(float(value) > 0 for _, _, value in ratios)
