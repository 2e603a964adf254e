"""`make report`: one static, self-contained HTML page for a whole reproduction.

Built only from a results folder's run JSONs, the paper table specs (:mod:`framework.paper_tables`) and the
memory CSVs: every declared table with the paper's numbers beside ours, Δ, the bootstrap statistics
(:mod:`framework.stats`) and the commands that fill its missing cells; Figure 1 with CIs as error bars;
learning curves; time and memory per method with what the estimates say the rest costs; provenance. Plots
are inline base64 PNGs and the style is inline: the page opens offline, from a file, with no server.
:func:`screenshot` renders it with headless Chromium (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd

from framework.paper_tables import load_all
from framework.io import atomic_write_text
from framework.report_data import (DEFAULT_MEMORY_DIRS, curves, load_runs, memory_files, missing_cells, provenance,
                                   speed_and_memory, summary)
from framework.stats_render import SAME_MD, stats_caption, stats_rows
from framework.table_render import MD_MARKS, caption, figure1, header, markdown_cells, table_notes
from framework.stats import check_reference
from framework.tables import build_tables, method_label, unplaced_failures

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1500px;color:#222;
line-height:1.4;padding:0 16px}h1{font-size:1.6em}h2{border-bottom:2px solid #ccd;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 12px;font-size:12px}th,td{border:1px solid #ccd;padding:3px 6px;
text-align:right;vertical-align:top}th{background:#eef}td:first-child,td:nth-child(2),th:first-child,
th:nth-child(2){text-align:left}td.same{background:#fff4d6}td.outside{color:#a33}p.caption{font-size:12px;color:#444;
max-width:1400px}ul.notes{font-size:12px;color:#444}.empty{color:#a33}nav a{margin-right:14px}img{max-width:100%;
border:1px solid #eee}code{font-size:11px}.summary{background:#f6f7fb;padding:8px 12px;border-left:4px solid #99c}
"""


def _esc(text) -> str:
    return html.escape(str(text))


def _table(head: list[str], rows: list[list[str]], cell_class=lambda text: "") -> str:
    out = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for cells in rows:
        tds = []
        for text in cells:
            cls = cell_class(text)
            tds.append(f"<td{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{_esc(text)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "".join(out) + "</tbody></table>"


def _frame(frame: pd.DataFrame, empty: str = "none") -> str:
    if frame.empty:
        return f"<p>{_esc(empty)}</p>"
    shown = frame.map(lambda v: "—" if v is None or (isinstance(v, float) and pd.isna(v)) else
                      (f"{v:,.2f}" if isinstance(v, float) else v))
    return _table([str(c) for c in shown.columns], shown.astype(str).values.tolist())


def _mark_class(text: str) -> str:
    if f"{SAME_MD}" in text:
        return "same"
    return "outside" if "paper outside" in text else ""


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_esc(alt)}">'


def _spec_section(spec, results_dir, reference, memory_dirs) -> tuple[str, list]:
    runs, tables = build_tables(results_dir, spec, reference=reference, memory_dirs=memory_dirs)
    parts = [f'<h3 id="{_esc(spec.name)}">{_esc(spec.title)}</h3>']
    if not tables:
        parts.append(f'<p class="empty">No completed runs of {_esc(spec.title)}\'s tasks '
                     f'({_esc(", ".join(spec.run_tasks))}) in this results folder.</p>')
    unplaced = unplaced_failures(runs, tables, spec) if tables else 0
    for table in tables:
        parts.append(f'<p class="caption">{_esc(caption(table))}</p>')
        parts.append(_table(header(spec), [markdown_cells(table, row) for row in table.rows], _mark_class))
        notes = table_notes(table, unplaced)
        if notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{_esc((MD_MARKS[k] + ' ') if k else '')}{_esc(text)}</li>"
                                                       for k, text in notes) + "</ul>")
        parts.append(f"<h4>{_esc(spec.title)} — statistics ({_esc(table.protocol)})</h4>")
        parts.append(f'<p class="caption">{_esc(stats_caption(table))}</p>')
        parts.append(_table(*stats_rows(table, SAME_MD), _mark_class))
    missing = missing_cells(spec, tables)
    if not missing.empty:
        parts.append(f"<details><summary>{len(missing)} missing cell(s) and the commands that fill them</summary>"
                     + _frame(missing) + "</details>")
    return "\n".join(parts), tables


def _cost_section(runs, results_dir, memory_dirs, specs, tables_by_spec) -> str:
    from framework.report_plots import data_uri, speed_and_memory_figure

    frame = speed_and_memory(runs)
    parts = ['<h2 id="cost">Time and memory per method</h2>',
             '<p class="caption">From the run files: median train samples/s and train time over seeds, the largest '
             'peak memory a run recorded (cuda: the allocator\'s peak; cpu_peak_rss: the process\'s peak resident '
             'memory, weights and data included).</p>', _frame(frame, "no completed runs")]
    if not frame.empty and frame["train_samples_per_s"].notna().any():
        parts.append(_img(data_uri(speed_and_memory_figure(frame)), "time and memory per method"))
    measured, estimated = memory_files(results_dir, memory_dirs)
    parts.append("<h3>Measured peak memory (make memory)</h3>")
    parts.append(_frame(measured.drop(columns=["peak_bytes", "peak_reserved_bytes"], errors="ignore"),
                        "no memory measurements (run `make memory`)"))
    parts.append("<h3>What the estimate says the rest costs (make memory-estimate)</h3>")
    if estimated.empty:
        parts.append("<p>no memory estimates (run `make memory-estimate`)</p>")
    else:
        done = {(row.model, row.label) for tables in tables_by_spec.values() for t in tables for row in t.rows}
        status = ["runs present" if (m, l) in done else "not run yet"
                  for m, l in zip(estimated["model"], estimated["method_label"])]
        estimated = estimated.drop(columns=["file"]).assign(status=status)
        parts.append('<p class="caption">Estimated peak training memory (GiB) of declared rows; "not run yet": '
                     'no result file of that row here. GPU-hours: `make cost`.</p>')
        parts.append(_frame(estimated))
    return "\n".join(parts)


def build_report(results_dir, memory_dirs=DEFAULT_MEMORY_DIRS, reference: str | None = None) -> str:
    """The whole page as one HTML string."""
    from framework.report_plots import data_uri, learning_curves

    results_dir = Path(results_dir)
    runs = load_runs(results_dir)
    check_reference({method_label(r) for _, r in runs}, reference)  # before any resampling or plotting
    counts = summary(runs)
    specs = [s for s in load_all() if s.tasks]
    body, tables_by_spec, figures = [], {}, []
    for spec in specs:
        section, tables = _spec_section(spec, results_dir, reference, memory_dirs)
        body.append(section)
        tables_by_spec[spec.name] = tables
        if tables and spec.figure:
            figures.append(f"<h3>{_esc(spec.title)}</h3>" + _img(data_uri(figure1(tables)), f"{spec.title} Figure 1"))
    frame = curves(runs)
    curve_imgs = [f"<h3>{_esc(model)}</h3>" + _img(data_uri(learning_curves(frame, model)), f"{model} learning curves")
                  for model in dict.fromkeys(frame["model"])]
    with_test = sum(1 for _, r in runs if any("test" in e for e in r.epochs))
    curve_imgs.insert(0, f'<p class="caption">The selection metric per epoch from each run file. Test scores per '
                         f'epoch are recorded only with trainer.test_every_epoch=true: {with_test} of {len(runs)} '
                         f'run(s) here have them; every run has its test score at the best validation epoch.</p>')
    prov = provenance(runs, tables_by_spec)
    page = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Reproduction report — {_esc(results_dir)}</title><style>{STYLE}</style></head><body>",
        f"<h1>C3A reproduction report: <code>{_esc(results_dir)}</code></h1>",
        f'<p class="summary">{counts["runs"]} run file(s): {counts["completed"]} completed, {counts["failed"]} '
        f'failed; {counts["tasks"]} task(s), {counts["methods"]} (model, method) row(s). Built offline from the run '
        "files, the paper table specs and the memory CSVs only. ≈: not distinguishable from the reference row "
        "(the 95% bootstrap CI of the difference includes 0); °: the paper's mean lies outside our 95% CI.</p>",
        '<nav><a href="#tables">Tables</a><a href="#figure1">Figure 1</a><a href="#curves">Learning curves</a>'
        '<a href="#cost">Time and memory</a><a href="#provenance">Provenance</a></nav>',
        '<h2 id="tables">Paper tables: ours beside the paper</h2>', *body,
        '<h2 id="figure1">Figure 1: average score vs trainable parameters and vs memory</h2>',
        *(figures or ["<p>No table with runs declares a figure.</p>"]),
        '<h2 id="curves">Learning curves</h2>', *(curve_imgs or ["<p>No per-epoch history in the run files.</p>"]),
        _cost_section(runs, results_dir, memory_dirs, specs, tables_by_spec),
        '<h2 id="provenance">Provenance</h2>',
        *(f"<h3>{_esc(title)}</h3>" + _frame(frame) for title, frame in prov.items()),
        "</body></html>",
    ]
    return "\n".join(page)


def write_report(results_dir, out, memory_dirs=DEFAULT_MEMORY_DIRS, reference: str | None = None) -> Path:
    out = Path(out)
    atomic_write_text(out, build_report(results_dir, memory_dirs, reference))
    return out


def chromium() -> str | None:
    """The headless browser, if installed (Debian's package: chromium)."""
    return next((exe for exe in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if exe), None)


def screenshot(html_path, png_path, width: int = 1400, height: int = 2400, timeout: int = 180) -> Path:
    """Render the page with headless Chromium into a PNG (the top ``height`` pixels)."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH: install it (Debian: apt-get install chromium) to render a PNG")
    png_path = Path(png_path).resolve()
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={png_path}", Path(html_path).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout)
    return png_path
