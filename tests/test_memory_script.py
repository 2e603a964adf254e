"""`make memory` on CPU: the spec's rows, each measured in its own process, written as CSV, with ratios to LoRA."""
from __future__ import annotations

import csv
import subprocess
import sys

from conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "measure_memory.py")


def test_memory_script_writes_rows_and_ratios(tmp_path):
    """Two Table 2 rows (named by their presets) rebuilt on the tiny model: seconds, same code path."""
    proc = subprocess.run([sys.executable, SCRIPT, "--presets", "table2/base_lora", "table2/base_c3a_b6",
                           "--on-model", "tiny-roberta", "--batch-size", "2", "--seq-len", "16", "--steps", "1",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "memory_table2_cpu.csv")))
    assert [r["method_label"] for r in rows] == ["LoRA r=8", "C3A b=6"]  # the spec's order
    assert [r["preset"] for r in rows] == ["table2/base_lora", "table2/base_c3a_b6"]
    assert all(r["model"] == "tiny-roberta" and r["device"] == "cpu" and int(r["peak_bytes"]) > 0 for r in rows)
    lora = next(r for r in rows if r["method"] == "lora")
    assert float(lora["ratio_to_lora"]) == 1.0
    ratios = [line.split() for line in proc.stdout.splitlines() if line.startswith("RATIO ")]
    assert len(ratios) == 2 and all(float(value) > 0 for _, _, value in ratios)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory_table2_cpu.csv"]  # no temp file left


def test_rows_that_the_spec_does_not_declare_are_refused(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--presets", "table2/base_lorra", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no rows of table2.yaml match" in proc.stderr and "table2/base_lora" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_llama_rows_measure_causal_lm_training_under_the_paper_labels(tmp_path):
    """Table 3's memory column: causal-LM rows (every token in the loss), labelled as the paper's rows."""
    proc = subprocess.run([sys.executable, SCRIPT, "--table", "table3", "--presets", "table3/llama2_lora",
                           "table3/llama2_c3a", "--on-model", "tiny-llama", "--batch-size", "2", "--seq-len", "16",
                           "--steps", "1", "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "memory_table3_cpu.csv")))
    assert [r["method_label"] for r in rows] == ["LoRA r=32", "C3A b=4096/32"]
    assert all(int(r["peak_bytes"]) > 0 and r["batch_size"] == "2" for r in rows)
