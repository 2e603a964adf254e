"""A paper table rendered as Markdown, LaTeX (booktabs), a tidy CSV of runs and an average-vs-cost plot.

The columns follow the table's spec (:mod:`framework.paper_tables`): model, method, params, memory (when the
spec has a memory column), one column per task, one per average. Markdown puts the paper's number and our
difference beside every cell; LaTeX keeps only the difference (compact). Every marker in a cell is
explained in a footnote under its table.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from framework.paper_tables import Average, TableSpec, TaskColumn, show_ours
from framework.io import atomic_write, atomic_write_text
from framework.stats_render import (SAME_MD, SAME_TEX, not_distinguishable, paper_check, stats_frame,
                                    stats_latex, stats_markdown)
from framework.tables import Row, Table, build_tables, unplaced_failures

MD_MARKS = {"short": "†", "mixed": "‡", "configs": "§", "partial": "*", "same": SAME_MD, "outside": "°"}
TEX_MARKS = {"short": r"\dagger", "mixed": r"\ddagger", "configs": r"\S", "partial": "*", "same": SAME_TEX,
             "outside": r"\circ"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}"}
#: how a metric key reads in a caption (other keys are shown with spaces for underscores)
METRIC_WORDS = {"matthews_correlation": "Matthews corr.", "pearson": "Pearson", "spearmanr": "Spearman",
                "f1": "F1", "exact_match": "exact match"}


def score_columns(spec: TableSpec) -> list[TaskColumn | Average]:
    """Task columns in the spec's order, each average right after the last task it covers (Table 4: GSM8K,
    MATH, Math Avg, HE, ..., Code Avg; an average over every task ends the row)."""
    columns: list[TaskColumn | Average] = []
    for task in spec.tasks:
        columns.append(task)
        columns += [a for a in spec.averages if a.tasks and a.tasks[-1] == task.name]
    return columns + [a for a in spec.averages if a not in columns]


def header(spec: TableSpec) -> list[str]:
    return ["Model", "Method", "Params", *(["Memory (GiB)"] if spec.memory else []),
            *(c.title for c in score_columns(spec))]


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (and spell out the few non-ASCII signs we emit)."""
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return (escaped.replace("±", r"$\pm$").replace("—", "--").replace("–", "--").replace("Δ", r"$\Delta$")
            .replace("≈", rf"${SAME_TEX}$").replace("≥", r"$\geq$"))


def _tex_marks(kinds) -> str:
    """All of a cell's markers in one superscript (adjacent ``$..$$..$`` would read as display math)."""
    return rf"$^{{{' '.join(TEX_MARKS[k] for k in kinds)}}}$" if kinds else ""


def _cell_marks(table: Table, row: Row, task: str) -> list[str]:
    cell = row.cells[task]
    return [k for k, on in (("short", cell.short), ("mixed", cell.mixed_provenance),
                            ("configs", cell.mixed_configs), ("same", not_distinguishable(table, row, task)),
                            ("outside", paper_check(table, row, task).startswith("paper outside"))) if on]


def _mean_std(mean: float, std: float | None, pm: str) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f}{pm}{std:.2f}"


def _params(row: Row) -> str:
    if not row.params:
        return "—"
    return " / ".join(show_ours(row.params_kind, p, row.params_total) for p in sorted(row.params))


def _memory(row: Row) -> str:
    if row.memory_gib is None:
        return "—"
    suffix = "" if "cuda" in (row.memory_device or "").lower() else f" [{row.memory_device}]"
    return f"{row.memory_gib:.2f}{suffix}"


def table_notes(table: Table, unplaced: int = 0) -> list[tuple[str | None, str]]:
    """(marker kind or None, plain-text note) for everything marked in ``table``."""
    spec = table.spec
    short, mixed, configs, failed, same, outside = [], [], [], [], [], []
    partial: dict[str, list[str]] = {a.title: [] for a in spec.averages}
    for row in table.rows:
        name = f"{row.model_row} {row.label}"
        for task in spec.tasks:
            cell, where = row.cells[task.name], f"{name} {task.title}"
            if cell.short:
                short.append(f"{where} (n={cell.n}/{cell.expected})")
            if cell.mixed_provenance:
                commits = ", ".join(sorted(str(c)[:8] for c in cell.commits))
                mixed.append(f"{where} (commits {commits}; {len(cell.versions)} version set(s))")
            if cell.mixed_configs:
                configs.append(f"{where} ({len(cell.configs)} configs)")
            if cell.failed:
                failed.append(f"{where} x{cell.failed}")
            if not_distinguishable(table, row, task.name):
                same.append(where)
            if paper_check(table, row, task.name).startswith("paper outside"):
                outside.append(where)
        for avg in spec.averages:
            if row.average_partial(avg):
                partial[avg.title].append(f"{name} ({len(row.present(avg.tasks))}/{len(avg.tasks)} tasks)")
    notes: list[tuple[str | None, str]] = []
    if short:
        notes.append(("short", "fewer completed seeds than configured: " + "; ".join(short)))
    if mixed:
        notes.append(("mixed", "runs from more than one git commit or package version: " + "; ".join(mixed)))
    if configs:
        notes.append(("configs", "runs of different configs pooled in one cell: " + "; ".join(configs)))
    if same:
        refs = "; ".join(f"{m}: {label}" for m, label in table.references.items())
        notes.append(("same", f"not distinguishable from the reference row ({refs}): the 95% bootstrap CI of "
                              "the difference includes 0 (statistics table below): " + "; ".join(same)))
    if outside:
        notes.append(("outside", "the paper's mean lies outside our 95% bootstrap CI: " + "; ".join(outside)))
    for title, rows in partial.items():
        if rows:
            notes.append(("partial", f"{title} over the present tasks only: " + "; ".join(rows)))
    if table.failed:
        notes.append((None, f"{table.failed} failed run(s) excluded from every mean: " + "; ".join(failed)))
    if table.unscored:
        notes.append((None, f"{len(table.unscored)} completed run(s) lack the {spec.title} metric and are "
                            "excluded: " + "; ".join(table.unscored)))
    if unplaced:
        notes.append((None, f"{unplaced} failed run(s) without a table for their split protocol."))
    return notes


def _metric_words(spec: TableSpec) -> str:
    """E.g. "Matthews corr. for CoLA, Pearson for STS-B, accuracy otherwise"."""
    word = lambda metric: METRIC_WORDS.get(metric, metric.replace("_", " "))  # noqa: E731
    common = Counter(t.metric for t in spec.tasks).most_common(1)[0][0]
    others = [f"{word(t.metric)} for {t.title}" for t in spec.tasks if t.metric != common]
    return ", ".join(others + [f"{word(common)} otherwise" if others else word(common)])


def caption(table: Table) -> str:
    spec = table.spec
    text = (f"{spec.caption}, split protocol: {table.protocol}. Mean ± sample std over seeds "
            f"(x{spec.scale:g}; {_metric_words(spec)}); trainable parameters exclude the head"
            + (" (percentages: of all parameters)" if spec.params == "percent" else ""))
    if not spec.memory:
        return text + "."
    devices = sorted({r.memory_device for r in table.rows if r.memory_device})
    memory = (f"peak training memory measured on {', '.join(devices)} (GiB = 2^30 bytes; {spec.memory})"
              if devices else "memory not measured (run `make memory`)")
    return f"{text}; memory: {memory}."


def _with_paper(text: str, ours: float | None, paper: float | None, check: str = "") -> str:
    if paper is None:
        return text
    if ours is None:
        return text + f" (paper {paper:.2f})"
    return text + f" (paper {paper:.2f}, Δ {ours - paper:+.2f}" + (f"; {check})" if check else ")")


def markdown_cells(table: Table, row: Row) -> list[str]:
    spec = table.spec
    cells = [row.model_row, row.label,
             _params(row) + (f" (paper {row.paper_params.show()})" if row.paper_params is not None else "")]
    if spec.memory:
        paper_mem = row.paper_value("memory_gb")
        cells.append(_memory(row) + (f" (paper {paper_mem:.2f})" if paper_mem is not None else ""))
    for column in score_columns(spec):
        if isinstance(column, Average):
            ours = row.average(column)
            text = "—" if ours is None else f"{ours:.2f}" + (MD_MARKS["partial"] if row.average_partial(column) else "")
            check = paper_check(table, row, column.name)
            text += MD_MARKS["outside"] if check.startswith("paper outside") else ""
            cells.append(text if ours is None else _with_paper(text, ours, row.paper_value(column.name), check))
            continue
        cell = row.cells[column.name]
        if cell.mean is None:
            cells.append(_with_paper("—", None, cell.paper_mean))
            continue
        text = _mean_std(cell.mean, cell.std, "±") + "".join(MD_MARKS[k] for k in _cell_marks(table, row, column.name))
        cells.append(_with_paper(text, cell.mean, cell.paper_mean, paper_check(table, row, column.name)))
    return cells


def render_markdown(tables: list[Table], unplaced: int = 0) -> str:
    """Every table under a heading naming its protocol, footnotes below each."""
    out = []
    for table in tables:
        cols = header(table.spec)
        out += [f"### {table.spec.title} — protocol: {table.protocol}", "", caption(table), "",
                "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(cols) - 2)) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in markdown_cells(table, row)) + " |"
                for row in table.rows]
        notes = table_notes(table, unplaced)
        if notes:
            out.append("")
            out += [f"- {MD_MARKS[k] + ' ' if k else ''}{text}" for k, text in notes]
        out.append("")
        out += stats_markdown(table)
    return "\n".join(out)


def _tex_delta(ours: float | None, paper: float | None) -> str:
    return "" if ours is None or paper is None else rf" {{\scriptsize ({ours - paper:+.2f})}}"


def _tex_row(table: Table, row: Row) -> list[str]:
    spec = table.spec
    cells = [tex_escape(row.model_row), tex_escape(row.label), tex_escape(_params(row))]
    if spec.memory:
        cells.append(tex_escape(_memory(row)))
    for column in score_columns(spec):
        if isinstance(column, Average):
            ours = row.average(column)
            text = "--" if ours is None else f"{ours:.2f}" + _tex_marks(["partial"] if row.average_partial(column) else [])
            cells.append(text + _tex_delta(ours, row.paper_value(column.name)))
            continue
        cell = row.cells[column.name]
        if cell.mean is None:
            cells.append("--")
            continue
        text = _mean_std(cell.mean, cell.std, r"$\pm$") + _tex_marks(_cell_marks(table, row, column.name))
        cells.append(text + _tex_delta(cell.mean, cell.paper_mean))
    return cells


def render_latex(tables: list[Table], unplaced: int = 0) -> str:
    """One booktabs ``table`` per protocol; parenthesised numbers are our difference to the paper."""
    out = []
    for table in tables:
        cols = header(table.spec)
        out += [r"\begin{table*}[t]", r"\centering", r"\small",
                rf"\caption{{{tex_escape(caption(table))} Small numbers: difference to the paper.}}",
                r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{ll" + "r" * (len(cols) - 2) + "}", r"\toprule",
                " & ".join(tex_escape(h) for h in cols) + r" \\", r"\midrule"]
        previous = None
        for row in table.rows:
            if previous is not None and row.model_row != previous:
                out.append(r"\midrule")
            previous = row.model_row
            out.append(" & ".join(_tex_row(table, row)) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}}"]
        for kind, text in table_notes(table, unplaced):
            out.append(r"\par\footnotesize " + (_tex_marks([kind]) + " " if kind else "") + tex_escape(text))
        out += [r"\end{table*}", ""]
        out += stats_latex(table, tex_escape)
    return "\n".join(out)


def _paper_points(spec: TableSpec) -> list[tuple[str, float | None, float | None, float]]:
    """(row name, parameter count, memory GiB, first average) of the paper's rows that give a count."""
    points = []
    avg = spec.averages[0].name if spec.averages else None
    for (model_row, label), cells in spec.paper.items():
        figure, count = spec.paper_params(model_row, label), None
        if figure is not None and figure.value is not None and figure.kind != "percent":
            count = figure.value * (1e6 if figure.kind == "millions" else 1)
        if avg is not None and isinstance(cells.get(avg), float):
            points.append((model_row, count, cells.get("memory_gb"), cells[avg]))
    return points


def plot_figure(tables: list[Table], path) -> None:
    """Write :func:`figure1` as a PNG."""
    import matplotlib.pyplot as plt

    fig = figure1(tables)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    plt.close(fig)


def figure1(tables: list[Table]):
    """The first average vs trainable parameters (log x) and vs memory; ours filled with the 95% stratified
    bootstrap CI of the average as error bars (where there are enough seeds), the paper's hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    spec = tables[0].spec
    fig, (ax_params, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    palette = ["tab:blue", "tab:orange", "tab:purple", "tab:red"]
    colors = {name: palette[i % len(palette)] for i, name in enumerate(spec.models.values())}
    markers = "osD^vP"
    for p_index, table in enumerate(tables):
        suffix = f" [{table.protocol}]" if len(tables) > 1 else ""
        for row in table.rows:
            if row.avg is None:
                continue
            style = dict(color=colors.get(row.model_row, "tab:green"), marker=markers[p_index % len(markers)])
            name = f"{row.model_row} {row.label}{suffix}" + (" *" if row.avg_partial else "")
            ci = table.row_stats(row).aggregates[spec.averages[0].name].mean
            yerr = [[row.avg - ci.low], [ci.high - row.avg]] if ci.has_ci else None
            for ax, x in ((ax_params, max(row.params) if row.params else None), (ax_mem, row.memory_gib)):
                if x is not None:
                    ax.scatter(x, row.avg, **style)
                    if yerr is not None:
                        ax.errorbar(x, row.avg, yerr=yerr, color=style["color"], capsize=3, lw=1)
                    ax.annotate(name, (x, row.avg), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for model_row, count, memory, avg in _paper_points(spec):
        style = dict(facecolors="none", edgecolors=colors.get(model_row, "grey"), alpha=0.6)
        if count is not None:
            ax_params.scatter(count, avg, **style)
        if isinstance(memory, float):
            ax_mem.scatter(memory, avg, **style)
    ax_params.set_xscale("log")
    ax_params.set_xlabel("trainable parameters (excl. head, log)")
    ax_mem.set_xlabel("peak training memory (GiB)")
    for ax in (ax_params, ax_mem):
        ax.set_ylabel(f"{spec.title} {spec.averages[0].title if spec.averages else ''} (x{spec.scale:g})")
        ax.grid(alpha=0.3)
    ax_params.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colors.items()],
                     fontsize=8, loc="lower right")
    if not ax_mem.collections:
        ax_mem.text(0.5, 0.5, "no memory measurements", transform=ax_mem.transAxes, ha="center")
    fig.suptitle("Average score vs parameters and memory (filled: ours, bars: 95% CI over seeds; hollow: paper)")
    fig.tight_layout()
    return fig


def output_names(spec: TableSpec, plot: bool = True) -> list[str]:
    """The files :func:`write_table` writes for a spec."""
    return [f"{spec.name}.md", f"{spec.name}.tex", f"{spec.name}_runs.csv", f"{spec.name}_stats.csv",
            *([spec.figure] if plot and spec.figure else [])]


def write_table(spec: TableSpec, results_dir, out_dir, protocol: str | None = None, plot: bool = True,
                reference: str | None = None) -> str | None:
    """Write :func:`output_names` to ``out_dir``; the Markdown, or None when no completed run of the spec's
    tasks exists (then nothing is written). ``reference``: the row the statistics compare to (default C3A)."""
    runs, tables = build_tables(results_dir, spec, protocol=protocol, reference=reference)
    if not tables:
        return None
    unplaced = unplaced_failures(runs, tables, spec, protocol)
    out = Path(out_dir)
    markdown = render_markdown(tables, unplaced)
    atomic_write_text(out / f"{spec.name}.md", markdown)
    atomic_write_text(out / f"{spec.name}.tex", render_latex(tables, unplaced))
    atomic_write_text(out / f"{spec.name}_runs.csv", runs.to_csv(index=False))
    atomic_write_text(out / f"{spec.name}_stats.csv", stats_frame(tables).to_csv(index=False))
    if plot and spec.figure:
        plot_figure(tables, out / spec.figure)
    return markdown
