"""Table aggregation and rendering from fake run JSONs written with the real result schema: Table 2 from its
spec (paper_tables/table2.yaml), and a made-up non-GLUE table through the same code."""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from framework.paper_tables import load_spec
from framework.results import RunResult, result_path, write_result
from framework.table_render import MD_MARKS, render_latex, render_markdown, tex_escape, write_table
from framework.tables import RUN_COLUMNS, aggregate, build_tables, collect_runs, load_memory, method_label

REPO = Path(__file__).resolve().parent.parent
SPEC = load_spec("table2")
TASKS = SPEC.task_names


def add_run(results_dir, *, task="rte", seed=0, score=0.7, model="roberta-base", method="c3a", label="C3A b=6",
            status="completed", protocol="holdout", leaky=False, commit="aaaa1111", versions=None,
            config_hash="cfg0000001", expected_seeds=None, params=110592, method_cfg=None, total=None,
            metric=None):
    """Write one run JSON where the trainer would; ``score`` is the table's metric as a fraction."""
    config = {"method": method_cfg or {"name": method}, "trainer": {"epochs": 3}}
    if expected_seeds is not None:
        config["expected_seeds"] = expected_seeds
    rid = f"{task}/{model}/{method}/{config_hash}/seed{seed}"
    metric = metric or (SPEC.task(task).metric if task in TASKS else "accuracy")
    result = RunResult(
        run_id=rid, status=status, model=model, method=method, task=task, seed=seed, config=config,
        method_label=label, task_details={"split": protocol, "leaky": leaky}, selection_metric=metric,
        test_at_best={} if status == "failed" else {metric: score},
        params={"trainable_excl_head": params, **({"total": total} if total else {})},
        provenance={"git_commit": commit, "versions": versions or {"torch": "2.4.0"}},
        error="boom" if status == "failed" else None)
    write_result(result_path(results_dir, rid), result)
    return result


def only_table(results_dir, spec=SPEC, **kw):
    _, tables = build_tables(results_dir, spec, **kw)
    assert len(tables) == 1
    return tables[0]


def find_row(table, model_row, label):
    return next(r for r in table.rows if r.model_row == model_row and r.label == label)


def test_mean_and_sample_std_over_seeds(tmp_path):
    scores = [0.70, 0.74, 0.78]
    for seed, s in enumerate(scores):
        add_run(tmp_path, seed=seed, score=s)
    cell = find_row(only_table(tmp_path), "Base", "C3A b=6").cells["rte"]
    assert cell.n == 3
    assert cell.mean == pytest.approx(74.0)
    assert cell.std == pytest.approx(statistics.stdev([70, 74, 78]))  # ddof=1: 4.0, not 3.27
    assert cell.std == pytest.approx(4.0)


def test_single_seed_shows_no_plus_minus(tmp_path):
    add_run(tmp_path, score=0.7)
    table = only_table(tmp_path)
    assert find_row(table, "Base", "C3A b=6").cells["rte"].std is None
    row_md = [l for l in render_markdown([table]).splitlines() if l.startswith("| Base")][0]
    assert "70.00 (paper 77.18, Δ -7.18)" in row_md
    assert "±" not in row_md.split("|")[9]  # the RTE column


def test_fewer_seeds_than_configured_marked(tmp_path):
    for seed in range(3):
        add_run(tmp_path, seed=seed, expected_seeds=5)
    table = only_table(tmp_path)
    cell = find_row(table, "Base", "C3A b=6").cells["rte"]
    assert cell.short and cell.expected == 5
    md = render_markdown([table])
    assert MD_MARKS["short"] in md and "n=3/5" in md


def test_expected_seeds_default_to_row_maximum(tmp_path):
    for seed in range(4):
        add_run(tmp_path, task="rte", seed=seed)
    for seed in range(2):
        add_run(tmp_path, task="mrpc", seed=seed)
    row = find_row(only_table(tmp_path), "Base", "C3A b=6")
    assert not row.cells["rte"].short
    assert row.cells["mrpc"].short and row.cells["mrpc"].expected == 4
    assert "n=2/4" in render_markdown([only_table(tmp_path)])


def test_failed_runs_excluded_and_counted(tmp_path):
    add_run(tmp_path, seed=0, score=0.70)
    add_run(tmp_path, seed=1, score=0.80)
    add_run(tmp_path, seed=2, status="failed")
    table = only_table(tmp_path)
    cell = find_row(table, "Base", "C3A b=6").cells["rte"]
    assert cell.n == 2 and cell.failed == 1 and cell.mean == pytest.approx(75.0)
    assert table.failed == 1
    assert cell.short  # 2 completed of 3 attempted seeds
    md = render_markdown([table])
    assert "1 failed run(s) excluded" in md and "Base C3A b=6 RTE x1" in md


def test_failed_run_without_split_is_reported(tmp_path):
    add_run(tmp_path, seed=0)
    add_run(tmp_path, seed=1, status="failed", protocol=None)
    md = write_table(SPEC, tmp_path, tmp_path / "out", plot=False)
    assert "1 failed run(s) without a table for their split protocol" in md


def test_protocols_never_mixed(tmp_path):
    add_run(tmp_path, seed=0, score=0.60, protocol="holdout")
    add_run(tmp_path, seed=0, score=0.90, protocol="dev_half", config_hash="cfg0000002")
    add_run(tmp_path, seed=1, score=0.95, protocol="dev", leaky=True, config_hash="cfg0000003")
    _, tables = build_tables(tmp_path, SPEC)
    means = {t.protocol: find_row(t, "Base", "C3A b=6").cells["rte"].mean for t in tables}
    assert means == {"holdout": pytest.approx(60.0), "dev_half": pytest.approx(90.0),
                     "dev (leaky)": pytest.approx(95.0)}
    md = render_markdown(tables)
    assert md.count("### Table 2 — protocol:") == 3
    filtered = only_table(tmp_path, protocol="dev_half")
    assert filtered.protocol == "dev_half"


def test_mixed_commit_and_version_flagged(tmp_path):
    add_run(tmp_path, seed=0, commit="aaaa1111")
    add_run(tmp_path, seed=1, commit="bbbb2222")
    add_run(tmp_path, task="mrpc", seed=0)
    add_run(tmp_path, task="mrpc", seed=1, versions={"torch": "2.5.0"})
    add_run(tmp_path, task="cola", seed=0)
    add_run(tmp_path, task="cola", seed=1)
    table = only_table(tmp_path)
    row = find_row(table, "Base", "C3A b=6")
    assert row.cells["rte"].mixed_provenance and row.cells["mrpc"].mixed_provenance
    assert not row.cells["cola"].mixed_provenance
    md = render_markdown([table])
    assert MD_MARKS["mixed"] in md and "aaaa1111, bbbb2222" in md


def test_different_configs_in_one_cell_flagged(tmp_path):
    add_run(tmp_path, seed=0, config_hash="cfg0000001")
    add_run(tmp_path, seed=1, config_hash="cfg0000002")
    cell = find_row(only_table(tmp_path), "Base", "C3A b=6").cells["rte"]
    assert cell.mixed_configs
    assert "different configs pooled" in render_markdown([only_table(tmp_path)])


def test_paper_delta_and_avg_over_all_six(tmp_path):
    paper = SPEC.paper[("Base", "C3A b=6")]
    for task in TASKS:
        for seed, offset in enumerate((-0.5, 0.5)):
            add_run(tmp_path, task=task, seed=seed, score=(paper[f"{task}_mean"] + 1.0 + offset) / 100)
    row = find_row(only_table(tmp_path), "Base", "C3A b=6")
    for task in TASKS:
        assert row.cells[task].delta == pytest.approx(1.0)
        assert row.cells[task].paper_std == pytest.approx(paper[f"{task}_std"])
    assert not row.avg_partial
    assert row.avg == pytest.approx(statistics.fmean(paper[f"{t}_mean"] for t in TASKS) + 1.0)
    assert row.params == [110592]
    md = render_markdown([only_table(tmp_path)])
    assert "(paper 77.18, Δ +1.00)" in md
    assert "110,592 (paper 110,592)" in md


def test_avg_over_present_tasks_is_marked(tmp_path):
    add_run(tmp_path, task="rte", score=0.70)
    add_run(tmp_path, task="mrpc", score=0.90)
    row = find_row(only_table(tmp_path), "Base", "C3A b=6")
    assert row.avg_partial and row.avg == pytest.approx(80.0)
    md = render_markdown([only_table(tmp_path)])
    assert "80.00*" in md and "Avg over the present tasks only: Base C3A b=6 (2/6 tasks)" in md


def test_task_metrics_and_rows(tmp_path):
    add_run(tmp_path, task="cola", score=0.6)
    add_run(tmp_path, task="stsb", score=0.9, model="roberta-large", label="C3A b=8")
    add_run(tmp_path, task="rte", model="tiny-roberta", label="LoRA r=8", method="lora")
    runs = collect_runs(tmp_path, SPEC)
    assert dict(zip(runs["task"], runs["metric"])) == {"cola": "matthews_correlation", "stsb": "pearson",
                                                      "rte": "accuracy"}
    table = only_table(tmp_path)
    assert [(r.model_row, r.label) for r in table.rows] == [("Base", "C3A b=6"), ("Large", "C3A b=8"),
                                                             ("tiny-roberta", "LoRA r=8")]
    assert find_row(table, "tiny-roberta", "LoRA r=8").paper is None


def test_label_built_from_config_when_unrecorded(tmp_path):
    r = add_run(tmp_path, label="", method_cfg={"name": "c3a", "b": 6})
    assert method_label(r) == "C3A b=6"
    r = add_run(tmp_path, label="", method="boft", method_cfg={"block_size": 8, "n_butterfly_factor": 2})
    assert method_label(r) == "BOFT b=8 m=2"
    r = add_run(tmp_path, label="", method="ia3", method_cfg={})
    assert method_label(r) == "(IA)3"


def test_memory_prefers_cuda_and_takes_largest(tmp_path):
    add_run(tmp_path)
    mem = tmp_path / "memory"
    mem.mkdir()
    pd.DataFrame([{"model": "roberta-base", "method_label": "C3A b=6", "device": "cpu", "peak_bytes": 9 * 2**30},
                  {"model": "roberta-base", "method_label": "C3A b=6", "device": "cuda:0", "peak_bytes": 2**30},
                  {"model": "roberta-base", "method_label": "C3A b=6", "device": "cuda:0",
                   "peak_bytes": 3 * 2**30}]).to_csv(mem / "a.csv", index=False)
    assert load_memory(tmp_path)[("roberta-base", "C3A b=6")] == (pytest.approx(3.0), "cuda:0")
    table = only_table(tmp_path)
    md = render_markdown([table])
    assert "3.00 (paper 12.72)" in md and "measured on cuda:0" in md


def test_memory_absent_shows_dash(tmp_path):
    add_run(tmp_path)
    md = render_markdown([only_table(tmp_path)])
    assert "| — (paper 12.72) |" in md and "memory not measured" in md


def test_markdown_well_formed(tmp_path):
    for seed in range(2):
        add_run(tmp_path, seed=seed)
        add_run(tmp_path, seed=seed, label="LoRA r=8", method="lora", params=294912)
    md = render_markdown([only_table(tmp_path)])
    paper_part, stats_part = md.split("#### Table 2 — statistics (holdout)")
    table_lines = [l for l in paper_part.splitlines() if l.startswith("|")]
    assert len(table_lines) == 2 + 2
    stats_lines = [l for l in stats_part.splitlines() if l.startswith("|")]
    assert len(stats_lines) == 2 + 2 and len({l.count("|") for l in stats_lines}) == 1
    assert len({l.count("|") - l.count("\\|") for l in table_lines}) == 1  # same column count everywhere
    assert table_lines[1].startswith("|---|---|---:")
    labels = [l.split("|")[2].strip() for l in table_lines[2:]]
    assert labels == ["LoRA r=8", "C3A b=6"]  # the paper's order


def test_latex_well_formed_and_escaped(tmp_path):
    for seed in range(2):
        add_run(tmp_path, seed=seed, label="Odd_name & 50% #1", method="odd", commit=f"c{seed}")
    add_run(tmp_path, seed=0, task="mrpc", label="(IA)3", method="ia3", protocol="dev_half")
    _, tables = build_tables(tmp_path, SPEC)
    tex = render_latex(tables)
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 4  # 2 protocols x (paper, statistics)
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == 4
    body = tex.replace(r"\{", "").replace(r"\}", "")
    depth = 0
    for ch in body:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert r"Odd\_name \& 50\% \#1" in tex
    assert "dev\\_half" in tex and "±" not in tex and "Δ" not in tex and "—" not in tex
    assert tex.count("$") % 2 == 0
    spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1)
    assert spec == "ll" + "r" * 9
    assert re.findall(r"\\begin\{tabular\}\{(\w+)\}", tex)[1] == "ll" + "r" * 7  # statistics: tasks + Avg
    for line in tex.splitlines():
        if line.startswith(("Base", "Model")) and "(CI)" not in line and "reference" not in line:
            assert len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1
    assert tex_escape("a_b&c%d$e#f{g}h~i^j\\") == (r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i"
                                                    r"\textasciicircum{}j\textbackslash{}")


def test_write_files_csv_columns_and_plot(tmp_path):
    results = tmp_path / "results"
    for seed in range(2):
        add_run(results, seed=seed)
        add_run(results, task="mrpc", seed=seed, model="roberta-large", label="C3A b=8", params=393216)
    add_run(results, seed=5, status="failed")
    out = tmp_path / "tables"
    md = write_table(SPEC, results, out)
    assert md == (out / "table2.md").read_text()
    assert (out / "table2.tex").read_text().startswith(r"\begin{table*}")
    runs = pd.read_csv(out / "table2_runs.csv")
    assert list(runs.columns) == list(RUN_COLUMNS)
    assert len(runs) == 5 and (runs["status"] == "failed").sum() == 1
    assert sorted(runs.loc[runs["status"] == "completed", "score"].round(4).unique()) == [70.0]
    png = (out / "figure1.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not list(out.glob(".*"))  # no temp files left behind


def test_paper_csv_has_all_rows():
    paper = SPEC.paper
    assert len(paper) == 16
    for model, labels in {"Base": ("VeRA r=1024", "C3A b=6"), "Large": ("VeRA r=256", "C3A b=8")}.items():
        for label in ("BitFit", "(IA)3", "LoRA r=8", "BOFT b=8 m=2", "C3A b=1", "Full", *labels):
            row = paper[(model, label)]
            assert row["avg"] == pytest.approx(statistics.fmean(row[f"{t}_mean"] for t in TASKS), abs=0.006)
    assert paper[("Base", "C3A b=6")]["rte_std"] == pytest.approx(1.41)
    assert SPEC.paper_params("Base", "C3A b=6").show() == "110,592"
    assert SPEC.paper_params("Large", "Full").show() == "354M"  # the paper prints only "354M"


def test_empty_results_dir(tmp_path):
    assert aggregate(collect_runs(tmp_path, SPEC), SPEC) == []
    assert write_table(SPEC, tmp_path, tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), "--results-dir",
                           str(tmp_path), "--no-plot"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert f"Table 2: no completed runs of its tasks found under {tmp_path / 'runs'}" in proc.stdout


def test_cli_prints_markdown(tmp_path):
    add_run(tmp_path, score=0.7718)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), "--results-dir",
                           str(tmp_path), "--out-dir", str(tmp_path / "t"), "--no-plot"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "77.18 (paper 77.18, Δ +0.00)" in proc.stdout
    assert (tmp_path / "t" / "table2.tex").exists() and not (tmp_path / "t" / "figure1.png").exists()


def test_completed_run_without_the_table_metric_is_excluded_and_listed(tmp_path):
    add_run(tmp_path, seed=0, score=0.7)
    bad = add_run(tmp_path, seed=1, score=0.9)
    bad.test_at_best = {"f1": 0.9}  # not the accuracy Table 2 reports for RTE
    write_result(result_path(tmp_path, bad.run_id), bad)
    table = only_table(tmp_path)
    assert find_row(table, "Base", "C3A b=6").cells["rte"].scores == [pytest.approx(70.0)]
    assert table.unscored == [bad.run_id]
    assert "lack the Table 2 metric" in render_markdown([table])


def test_protocol_is_read_from_the_task_description():
    """GlueTask.describe() (the result's task_details) records the protocol under "split"; a leaky one is its
    own protocol."""
    from framework.tables import protocol_key

    assert protocol_key({"split": "holdout"}) == "holdout"
    assert protocol_key({"split": "dev", "leaky": True}) == "dev (leaky)"
    assert protocol_key({}) == "unrecorded"


def test_schema_1_result_split_is_read_as_task_details(tmp_path):
    """Result files written before schema 2 call the task description "split"; the table still reads it."""
    import json

    add_run(tmp_path, protocol="dev_half")
    path = next((tmp_path / "runs").rglob("*.json"))
    data = json.loads(path.read_text())
    data["split"] = data.pop("task_details")
    data["schema_version"] = 1
    path.write_text(json.dumps(data))
    assert only_table(tmp_path).protocol == "dev_half"


# ------------------------------------------------------------------ the rows are declared once, as data
def test_table2_rows_are_declared_once():
    """16 rows, one per conf/experiment/table2 preset and one preset per row; every row has the paper's numbers."""
    presets = sorted(f"table2/{p.stem}" for p in (REPO / "conf" / "experiment" / "table2").glob("*.yaml"))
    declared = [row.preset for row in SPEC.rows]
    assert len(SPEC.rows) == 16
    assert sorted(declared) == presets  # each preset named by exactly one row, and vice versa
    assert len({(row.model, row.label) for row in SPEC.rows}) == 16
    assert {SPEC.model_row(row.model) for row in SPEC.rows} == {"Base", "Large"}
    assert [t.metric for t in SPEC.tasks] == ["accuracy", "accuracy", "matthews_correlation", "accuracy",
                                              "accuracy", "pearson"]


# --------------------------------------------------------- a second, made-up table through the same code
OTHER_SPEC = """\
title: Table X
caption: Made-up image accuracy at the best validation epoch
paper_csv: tablex.csv
params: percent
models: {vit-tiny: Tiny}
tasks:
  - {name: pets, title: Pets, metric: accuracy}
  - {name: cars, title: Cars, metric: accuracy}
  - {name: dtd, title: DTD, metric: top1}
averages:
  - {name: pair_avg, title: Pair Avg, tasks: [pets, cars]}
  - {name: avg, title: Avg, tasks: [pets, cars, dtd]}
rows:
  - {model: vit-tiny, label: C3A b=12, overrides: [method=c3a, method.b=12]}
  - {model: vit-tiny, label: LoRA r=16, overrides: [method=lora, method.r=16]}
"""
OTHER_CSV = """\
model,method_label,params,pets_mean,cars_mean,dtd_mean,pair_avg,avg,source,note
Tiny,LoRA r=16,0.69,93.00,78.00,78.00,85.50,83.00,made up,
Tiny,C3A b=12,0.26,94.00,79.00,80.00,86.50,84.33,made up,
"""


def other_spec(tmp_path, text=OTHER_SPEC, csv=OTHER_CSV):
    folder = tmp_path / "paper"
    folder.mkdir(exist_ok=True)
    (folder / "tablex.yaml").write_text(text)
    (folder / "tablex.csv").write_text(csv)
    return folder / "tablex.yaml"


def test_a_second_table_renders_through_the_same_code(tmp_path):
    """Non-GLUE tasks, a metric of its own, two averages, parameters as % of all, no memory, no paper std."""
    spec = load_spec(other_spec(tmp_path))
    results = tmp_path / "results"
    for seed, (pets, cars) in enumerate(((0.95, 0.80), (0.97, 0.82))):
        add_run(results, task="pets", seed=seed, score=pets, model="vit-tiny", method="lora", label="LoRA r=16",
                params=590_000, total=86_000_000, metric="accuracy")
        add_run(results, task="cars", seed=seed, score=cars, model="vit-tiny", method="lora", label="LoRA r=16",
                params=590_000, total=86_000_000, metric="accuracy")
        add_run(results, task="pets", seed=seed, score=0.94, model="vit-tiny", label="C3A b=12",
                params=221_184, total=85_800_000, metric="accuracy")
    add_run(results, task="rte", score=0.7)  # a Table 2 run: not this table's
    table = only_table(results, spec)
    assert [r.label for r in table.rows] == ["C3A b=12", "LoRA r=16"]  # the spec's order
    lora = find_row(table, "Tiny", "LoRA r=16")
    assert lora.cells["pets"].mean == pytest.approx(96.0) and lora.cells["pets"].paper_std is None
    assert lora.average(spec.averages[0]) == pytest.approx(88.5)  # Pair Avg: both tasks present
    assert lora.average_partial(spec.averages[1])  # Avg: DTD missing
    md = render_markdown([table])
    lines = [l for l in md.splitlines() if l.startswith("|")]
    assert lines[0] == "| Model | Method | Params | Pets | Cars | Pair Avg | DTD | Avg |"  # averages follow their tasks
    assert "### Table X — protocol: holdout" in md and "Made-up image accuracy" in md
    assert "top1 for DTD, accuracy otherwise" in md and "memory" not in md.lower()
    lora_md = next(l for l in lines if "LoRA r=16" in l)
    assert "0.686% (paper 0.69%)" in lora_md
    assert "96.00±1.41 (paper 93.00, Δ +3.00)" in lora_md
    assert "88.50 (paper 85.50, Δ +3.00)" in lora_md
    assert "— (paper 78.00)" in lora_md  # DTD: the paper's number, none of ours
    assert "* Avg over the present tasks only: Tiny C3A b=12 (1/3 tasks); Tiny LoRA r=16 (2/3 tasks)" in md
    assert "Pair Avg over the present tasks only: Tiny C3A b=12 (1/2 tasks)" in md
    tex = render_latex([table])
    assert re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1) == "ll" + "r" * 6
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "make_table.py"), "--table", str(spec.path),
                           "--results-dir", str(results), "--out-dir", str(out), "--no-plot"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (out / "tablex.md").read_text() == md and (out / "tablex_runs.csv").exists()
    assert not (out / "table2.md").exists()


@pytest.mark.parametrize("edit,message", [
    (("metric: accuracy}", "metrc: accuracy}"), "tasks[0]: unknown key(s) ['metrc']"),
    (("params: percent", "params: percents"), "params: 'percents' is not a params kind"),
    (("overrides: [method=c3a, method.b=12]", "preset: table2/nope"), "rows[0].preset: 'table2/nope' is not a preset"),
    (("label: LoRA r=16", "label: LoRA r=32"), "rows[1]: no row model='Tiny', method_label='LoRA r=32'"),
    (("{model: vit-tiny, label: C3A", "{model: vit-huge, label: C3A"), "rows[0].model: 'vit-huge' is not in models"),
    (("tasks: [pets, cars]}", "tasks: [pets, flowers]}"), "averages[0].tasks"),
])
def test_spec_errors_name_the_file_and_the_key(tmp_path, edit, message):
    from framework.paper_tables import SpecError

    path = other_spec(tmp_path, OTHER_SPEC.replace(*edit, 1))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_paper_csv_errors_name_the_file(tmp_path):
    from framework.paper_tables import SpecError

    path = other_spec(tmp_path, csv=OTHER_CSV.replace("dtd_mean", "dtd_score"))
    with pytest.raises(SpecError, match=r"tablex\.csv: missing column\(s\) \['dtd_mean'\]"):
        load_spec(path)
    path = other_spec(tmp_path, csv=OTHER_CSV.replace("93.00", "n/a"))
    with pytest.raises(SpecError, match=r"tablex\.csv: line 2: column pets_mean: 'n/a' is not a number"):
        load_spec(path)
    path = other_spec(tmp_path, csv=OTHER_CSV.replace("0.69", "0.69%"))
    with pytest.raises(SpecError, match=r"tablex\.csv: line 2: column params: '0.69%' is neither a number"):
        load_spec(path)


def test_one_task_fills_several_columns(tmp_path):
    """An instruction task scores each of its test sets (Table 3: commonsense -> BoolQ, PIQA, ...): one run
    fills several columns, and a failed run counts once."""
    text = """\
title: Table Y
paper_csv: tablex.csv
params: percent
models: {llama-tiny: Tiny}
tasks:
  - {name: boolq, title: BoolQ, metric: boolq, task: commonsense}
  - {name: piqa, title: PIQA, metric: piqa, task: commonsense}
rows:
  - {model: llama-tiny, label: C3A b=4096/32, overrides: [method=c3a]}
"""
    csv = "model,method_label,params,boolq_mean,piqa_mean,avg\nTiny,C3A b=4096/32,0.35,73.4,83.4,78.4\n"
    spec = load_spec(other_spec(tmp_path, text, csv))
    assert spec.run_tasks == ["commonsense"] and spec.task_names == ["boolq", "piqa"]
    for seed, (boolq, piqa) in enumerate(((0.70, 0.80), (0.72, 0.84))):
        result = add_run(tmp_path, task="commonsense", seed=seed, model="llama-tiny", label="C3A b=4096/32",
                         metric="score", score=0.0)
        result.test_at_best = {"boolq": boolq, "piqa": piqa, "score": (boolq + piqa) / 2}
        write_result(result_path(tmp_path, result.run_id), result)
    add_run(tmp_path, task="commonsense", seed=2, model="llama-tiny", label="C3A b=4096/32", status="failed")
    table = only_table(tmp_path, spec)
    row = find_row(table, "Tiny", "C3A b=4096/32")
    assert row.cells["boolq"].mean == pytest.approx(71.0) and row.cells["piqa"].mean == pytest.approx(82.0)
    assert row.avg == pytest.approx(76.5)
    assert table.failed == 1 and row.cells["boolq"].failed == row.cells["piqa"].failed == 1
    md = render_markdown([table])
    assert "| Model | Method | Params | BoolQ | PIQA | Avg |" in md
    assert "76.50 (paper 78.40, Δ -1.90)" in md and "1 failed run(s) excluded" in md
