"""`make report`: the page's structure (parsed, fast) on a results folder shaped like `make demo`'s and on the
shipped MiniLM grid, and a real browser's rendering of it (headless Chromium, slow)."""
from __future__ import annotations

import base64
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from framework.paper_tables import load_all
from framework.report import build_report, chromium, screenshot, write_report
from framework.results import RunResult, result_path, write_result

REPO = Path(__file__).resolve().parent.parent
MINILM = REPO / "results" / "minilm-cpu" / "table"
SECTIONS = ("tables", "figure1", "curves", "cost", "provenance")


class Page(HTMLParser):
    """Every tag with its attributes, section ids, images, and each table's cell count per row."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.ids, self.images, self.tables, self.text = [], set(), [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append(0)
        if tag in ("td", "th"):
            self.tables[-1][-1] += 1

    def handle_data(self, data):
        self.text.append(data)


def assert_self_contained(page: Page, text: str) -> None:
    """No scripts or stylesheets to fetch, every image an inline PNG, no external address, rectangular tables."""
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe")]
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href"):
                assert value.startswith(("data:", "#")), (tag, name, value[:60])
    assert "http://" not in text and "https://" not in text
    for src in page.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for rows in page.tables:
        assert len(set(rows)) == 1, rows


def demo_run(results, method, label, *, task="sst2", seed=0, epochs=1, status="completed", error=None,
             accuracy=0.8, commit="abc1234def"):
    """A run JSON shaped like `make demo`'s (MiniLM on the SST-2 sample, holdout, one epoch, no test per epoch)."""
    rid = f"{task}/minilm/{method}/cfg{method:0>7}/seed{seed}"
    history = [{"epoch": e + 1, "train_loss": 0.5, "val": {"accuracy": accuracy - 0.01 * (epochs - e)},
                "train_samples": 3500, "train_time_s": 60.0} for e in range(epochs)]
    result = RunResult(
        run_id=rid, status=status, model="minilm", method=method, task=task, seed=seed,
        config={"method": {"name": method}, "trainer": {"epochs": epochs}}, method_label=label,
        task_details={"split": "holdout", "leaky": False, "source": {"train_sha256": "f" * 64, "dev_sha256": "e" * 64}},
        selection_metric="accuracy", epochs=[] if status == "failed" else history,
        best_epoch=None if status == "failed" else epochs,
        test_at_best={} if status == "failed" else {"accuracy": accuracy},
        params={"trainable_excl_head": {"head": 0, "lora": 73728, "c3a": 27648}[method], "total": 22_700_000},
        memory={"kind": "cpu_peak_rss", "peak_bytes": 1.5 * 2**30},
        timing={"train_samples_per_s": 50.0, "train_time_s": 70.0},
        provenance={"git_commit": commit, "versions": {"torch": "2.13.0+cpu"}, "device": "cpu", "cpu_count": 2},
        error=error)
    write_result(result_path(results, rid), result)


@pytest.fixture
def demo_results(tmp_path):
    results = tmp_path / "demo"
    for method, label, acc in (("head", "Head", 0.70), ("lora", "LoRA r=8", 0.83), ("c3a", "C3A b=6", 0.82)):
        demo_run(results, method, label, accuracy=acc)
    demo_run(results, "lora", "LoRA r=8", seed=1, status="failed",
             error="Traceback (most recent call last):\n  File ...\nRuntimeError: out of memory at step 12\n")
    memory = tmp_path / "memory"
    memory.mkdir()
    (memory / "estimate.csv").write_text("model,method_label,preset,batch_size,seq_len,total_gib\n"
                                         "llama2-7b,LoRA r=32,table3/llama2_lora,16,256,62.58\n")
    return results, memory


def test_page_structure_on_a_demo_shaped_folder(demo_results, tmp_path):
    results, memory = demo_results
    out = write_report(results, tmp_path / "report.html", memory_dirs=[memory])
    text = out.read_text()
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>") and set(SECTIONS) <= page.ids
    assert {s.name for s in load_all() if s.tasks} <= page.ids  # every declared table has its section
    assert_self_contained(page, text)
    assert len(page.images) >= 3  # Figure 1, learning curves, time and memory
    words = " ".join(page.text)
    assert "Minilm" in words or "minilm" in words
    assert "1 failed" in words and "RuntimeError: out of memory at step 12" in words  # failed run, its error line
    assert "no CI: only 1 seed (a CI needs 3)" in words  # why no CI
    assert "python run.py -m experiment=table2/base_lora task=sst2 seed=0,1,2" in words  # a missing cell's command
    assert "not run yet" in words and "62.58" in words  # the memory estimate for what is not run
    assert "abc1234def" in words and "holdout" in words and "ffffffffffff" in words  # provenance


def test_reference_flag_reaches_the_page(demo_results):
    results, memory = demo_results
    words = " ".join(Page(build_report(results, [memory], reference="LoRA")).text)
    assert "reference: minilm: LoRA r=8" in words


def test_cli_errors_before_any_work(tmp_path, demo_results):
    results, _ = demo_results
    script = str(REPO / "scripts" / "make_report.py")
    proc = subprocess.run([sys.executable, script, "--results-dir", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "has no runs/ folder" in proc.stderr
    proc = subprocess.run([sys.executable, script, "--results-dir", str(results), "--reference", "DoRA"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "choose one of: C3A b=6, Head, LoRA r=8" in proc.stderr
    assert not (results / "report.html").exists()


def test_page_on_the_shipped_minilm_grid(tmp_path):
    text = build_report(MINILM)
    page = Page(text)
    assert_self_contained(page, text)
    words = " ".join(page.text)
    assert "32 run file(s): 32 completed, 0 failed" in words
    assert "mrpc: only 2 seeds (a CI needs 3)" in words and "P=0.50" in words
    assert "Mixed-commit and mixed-config cells" in words and "minilm C3A b=6 rte" in words
    assert len(page.images) == 3


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_chromium_renders_the_page(demo_results, tmp_path):
    from PIL import Image

    results, memory = demo_results
    out = write_report(results, tmp_path / "report.html", memory_dirs=[memory])
    png = screenshot(out, tmp_path / "report.png", width=1200, height=1600)
    image = Image.open(png).convert("L")
    assert image.size == (1200, 1600)
    histogram = image.histogram()
    assert histogram[255] < 0.97 * sum(histogram)  # not a blank page: text, tables and plots were drawn
    assert sum(1 for count in histogram if count) > 50  # many grey levels: antialiased text and plots
