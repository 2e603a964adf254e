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


def test_the_meta_estimate_counts_what_a_real_build_holds():
    """The meta-device build has the real build's parameters and buffers (BOFT's permutation matrices included),
    and the saved activations grow with the batch: the estimate's parts, checked on the tiny Llama."""
    from framework.paper_tables import build_row, compose_row, load_spec
    from framework.memory import estimate

    spec = load_spec("table3")
    for preset in ("table3/llama2_lora", "table3/llama2_boft"):
        row = next(r for r in spec.rows if r.preset == preset)
        on_tiny = ["model=tiny-llama"]
        real = build_row(row, weights="random", extra_overrides=on_tiny).adapted
        small, large, larger = (estimate(compose_row(row, on_tiny), batch, 32) for batch in (2, 4, 6))
        assert small.weights == sum(p.numel() * p.element_size() for p in real.model.parameters())
        assert small.buffers == sum(b.numel() * b.element_size() for b in real.model.buffers())
        assert small.trainable == real.num_adapter_params() + real.num_head_params()
        assert small.optimizer == 2 * small.gradients > 0
        step = large.activations - small.activations  # activations: a fixed part plus a part linear in the batch
        assert step > 0 and abs((larger.activations - large.activations) - step) <= 0.01 * step
    assert small.buffers > 0  # BOFT's permutation matrices: (factors) x d_in x d_in per adapted layer


def test_estimate_cli_writes_its_own_file(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--estimate", "--table", "table3", "--presets", "table3/llama2_c3a",
                           "--on-model", "tiny-llama", "--batch-size", "2", "--seq-len", "16", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "estimate_table3_b2x16.csv")))
    assert [r["method_label"] for r in rows] == ["C3A b=4096/32"] and float(rows[0]["total_gib"]) > 0
