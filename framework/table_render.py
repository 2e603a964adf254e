"""Table 2 rendered as Markdown, LaTeX (booktabs), a tidy CSV of runs and a Figure-1-like plot.

Markdown puts the paper's number and our difference beside every cell; LaTeX keeps only the difference
(compact). Every marker in a cell is explained in a footnote under its table.
"""
from __future__ import annotations

from pathlib import Path

from framework.results import atomic_write_text
from framework.tables import (DEFAULT_PAPER_CSV, TASK_TITLES, TASKS, Row, Table, build_tables, load_paper,
                        unplaced_failures)

MD_MARKS = {"short": "†", "mixed": "‡", "configs": "§", "partial": "*"}
TEX_MARKS = {"short": r"\dagger", "mixed": r"\ddagger", "configs": r"\S", "partial": "*"}
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
HEADER = ["Model", "Method", "Params", "Memory (GiB)", *[TASK_TITLES[t] for t in TASKS], "Avg"]


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (and spell out the few non-ASCII signs we emit)."""
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return escaped.replace("±", r"$\pm$").replace("—", "--").replace("Δ", r"$\Delta$")


def _tex_marks(kinds) -> str:
    """All of a cell's markers in one superscript (adjacent ``$..$$..$`` would read as display math)."""
    return rf"$^{{{' '.join(TEX_MARKS[k] for k in kinds)}}}$" if kinds else ""


def _cell_marks(cell) -> list[str]:
    return [k for k, on in (("short", cell.short), ("mixed", cell.mixed_provenance),
                            ("configs", cell.mixed_configs)) if on]


def _mean_std(mean: float, std: float | None, pm: str) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f}{pm}{std:.2f}"


def _params(row: Row) -> str:
    return " / ".join(f"{p:,}" for p in sorted(row.params)) if row.params else "—"


def _memory(row: Row) -> str:
    if row.memory_gib is None:
        return "—"
    suffix = "" if "cuda" in (row.memory_device or "").lower() else f" [{row.memory_device}]"
    return f"{row.memory_gib:.2f}{suffix}"


def table_notes(table: Table, unplaced: int = 0) -> list[tuple[str | None, str]]:
    """(marker kind or None, plain-text note) for everything marked in ``table``."""
    short, mixed, configs, partial, failed = [], [], [], [], []
    for row in table.rows:
        name = f"{row.model_row} {row.label}"
        for task in TASKS:
            cell, where = row.cells[task], f"{name} {TASK_TITLES[task]}"
            if cell.short:
                short.append(f"{where} (n={cell.n}/{cell.expected})")
            if cell.mixed_provenance:
                commits = ", ".join(sorted(str(c)[:8] for c in cell.commits))
                mixed.append(f"{where} (commits {commits}; {len(cell.versions)} version set(s))")
            if cell.mixed_configs:
                configs.append(f"{where} ({len(cell.configs)} configs)")
            if cell.failed:
                failed.append(f"{where} x{cell.failed}")
        if row.avg_partial:
            partial.append(f"{name} ({len(row.present_tasks)}/{len(TASKS)} tasks)")
    notes: list[tuple[str | None, str]] = []
    if short:
        notes.append(("short", "fewer completed seeds than configured: " + "; ".join(short)))
    if mixed:
        notes.append(("mixed", "runs from more than one git commit or package version: " + "; ".join(mixed)))
    if configs:
        notes.append(("configs", "runs of different configs pooled in one cell: " + "; ".join(configs)))
    if partial:
        notes.append(("partial", "Avg over the present tasks only: " + "; ".join(partial)))
    if table.failed:
        notes.append((None, f"{table.failed} failed run(s) excluded from every mean: " + "; ".join(failed)))
    if table.unscored:
        notes.append((None, f"{len(table.unscored)} completed run(s) lack the Table 2 metric and are excluded: "
                      + "; ".join(table.unscored)))
    if unplaced:
        notes.append((None, f"{unplaced} failed run(s) without a table for their split protocol."))
    return notes


def caption(table: Table) -> str:
    devices = sorted({r.memory_device for r in table.rows if r.memory_device})
    memory = (f"peak training memory measured on {', '.join(devices)} (GiB = 2^30 bytes; the paper: GPU, "
              "256 tokens, batch 64)" if devices else "memory not measured (run `make memory`)")
    return (f"GLUE test scores at the best validation epoch, split protocol: {table.protocol}. Mean ± sample std "
            f"over seeds (x100; Matthews corr. for CoLA, Pearson for STS-B, accuracy otherwise); trainable "
            f"parameters exclude the head; memory: {memory}.")


def _md_row(row: Row) -> list[str]:
    paper_params, paper_mem = row.paper_value("params"), row.paper_value("memory_gb")
    cells = [row.model_row, row.label,
             _params(row) + (f" (paper {paper_params:,.0f})" if paper_params is not None else ""),
             _memory(row) + (f" (paper {paper_mem:.2f})" if paper_mem is not None else "")]
    for task in TASKS:
        cell = row.cells[task]
        if cell.mean is None:
            cells.append("—" + (f" (paper {cell.paper_mean:.2f})" if cell.paper_mean is not None else ""))
            continue
        text = _mean_std(cell.mean, cell.std, "±") + "".join(MD_MARKS[k] for k in _cell_marks(cell))
        if cell.paper_mean is not None:
            text += f" (paper {cell.paper_mean:.2f}, Δ {cell.delta:+.2f})"
        cells.append(text)
    avg, paper_avg = row.avg, row.paper_value("avg")
    text = "—" if avg is None else f"{avg:.2f}" + (MD_MARKS["partial"] if row.avg_partial else "")
    if avg is not None and paper_avg is not None:
        text += f" (paper {paper_avg:.2f}, Δ {avg - paper_avg:+.2f})"
    cells.append(text)
    return cells


def render_markdown(tables: list[Table], unplaced: int = 0) -> str:
    """Every table under a heading naming its protocol, footnotes below each."""
    out = []
    for table in tables:
        out += [f"### Table 2 — protocol: {table.protocol}", "", caption(table), "",
                "| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADER) - 2)) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in _md_row(row)) + " |" for row in table.rows]
        notes = table_notes(table, unplaced)
        if notes:
            out.append("")
            out += [f"- {MD_MARKS[k] + ' ' if k else ''}{text}" for k, text in notes]
        out.append("")
    return "\n".join(out)


def _tex_row(row: Row) -> list[str]:
    cells = [tex_escape(row.model_row), tex_escape(row.label), tex_escape(_params(row)), tex_escape(_memory(row))]
    for task in TASKS:
        cell = row.cells[task]
        if cell.mean is None:
            cells.append("--")
            continue
        text = _mean_std(cell.mean, cell.std, r"$\pm$") + _tex_marks(_cell_marks(cell))
        if cell.delta is not None:
            text += rf" {{\scriptsize ({cell.delta:+.2f})}}"
        cells.append(text)
    avg, paper_avg = row.avg, row.paper_value("avg")
    text = "--" if avg is None else f"{avg:.2f}" + _tex_marks(["partial"] if row.avg_partial else [])
    if avg is not None and paper_avg is not None:
        text += rf" {{\scriptsize ({avg - paper_avg:+.2f})}}"
    cells.append(text)
    return cells


def render_latex(tables: list[Table], unplaced: int = 0) -> str:
    """One booktabs ``table`` per protocol; parenthesised numbers are our difference to the paper."""
    out = []
    for table in tables:
        out += [r"\begin{table*}[t]", r"\centering", r"\small",
                rf"\caption{{{tex_escape(caption(table))} Small numbers: difference to the paper.}}",
                r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{ll" + "r" * (len(HEADER) - 2) + "}", r"\toprule",
                " & ".join(tex_escape(h) for h in HEADER) + r" \\", r"\midrule"]
        previous = None
        for row in table.rows:
            if previous is not None and row.model_row != previous:
                out.append(r"\midrule")
            previous = row.model_row
            out.append(" & ".join(_tex_row(row)) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}}"]
        for kind, text in table_notes(table, unplaced):
            out.append(r"\par\footnotesize " + (_tex_marks([kind]) + " " if kind else "") + tex_escape(text))
        out += [r"\end{table*}", ""]
    return "\n".join(out)


def plot_figure1(tables: list[Table], path, paper: dict | None = None) -> None:
    """Average score vs trainable parameters (log x) and vs memory; ours filled, the paper's hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_params, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"Base": "tab:blue", "Large": "tab:orange"}
    markers = "osD^vP"
    for p_index, table in enumerate(tables):
        suffix = f" [{table.protocol}]" if len(tables) > 1 else ""
        for row in table.rows:
            if row.avg is None:
                continue
            style = dict(color=colors.get(row.model_row, "tab:green"), marker=markers[p_index % len(markers)])
            name = f"{row.model_row} {row.label}{suffix}" + (" *" if row.avg_partial else "")
            if row.params:
                ax_params.scatter(max(row.params), row.avg, **style)
                ax_params.annotate(name, (max(row.params), row.avg), fontsize=7, xytext=(3, 3),
                                   textcoords="offset points")
            if row.memory_gib is not None:
                ax_mem.scatter(row.memory_gib, row.avg, **style)
                ax_mem.annotate(name, (row.memory_gib, row.avg), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
    for (model, label), values in (paper or {}).items():
        color = colors.get(model, "grey")
        ax_params.scatter(values["params"], values["avg"], facecolors="none", edgecolors=color, alpha=0.6)
        ax_mem.scatter(values["memory_gb"], values["avg"], facecolors="none", edgecolors=color, alpha=0.6)
    ax_params.set_xscale("log")
    ax_params.set_xlabel("trainable parameters (excl. head, log)")
    ax_mem.set_xlabel("peak training memory (GiB)")
    for ax in (ax_params, ax_mem):
        ax.set_ylabel("GLUE average (x100)")
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    ax_params.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in colors.items()],
                     fontsize=8, loc="lower right")
    if not ax_mem.collections:
        ax_mem.text(0.5, 0.5, "no memory measurements", transform=ax_mem.transAxes, ha="center")
    fig.suptitle("Average score vs parameters and memory (filled: ours; hollow: paper)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def write_table2(results_dir, out_dir, protocol: str | None = None, plot: bool = True,
                 paper_csv=DEFAULT_PAPER_CSV) -> str | None:
    """Write table2.md, table2.tex, runs.csv (and figure1.png) to ``out_dir``; the Markdown, or None
    when no completed Table 2 run exists (then nothing is written)."""
    runs, tables = build_tables(results_dir, paper_csv, protocol=protocol)
    if not tables:
        return None
    unplaced = unplaced_failures(runs, tables, protocol)
    out = Path(out_dir)
    markdown = render_markdown(tables, unplaced)
    atomic_write_text(out / "table2.md", markdown)
    atomic_write_text(out / "table2.tex", render_latex(tables, unplaced))
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    if plot:
        plot_figure1(tables, out / "figure1.png", load_paper(paper_csv))
    return markdown
