"""The statistics of a table (:mod:`framework.stats`) as text: cell marks, a second table, a tidy CSV.

Under each paper table comes a statistics table: per task, each row's difference to its reference row with
the 95% bootstrap CI and P(X > ref); per average, the stratified bootstrap CI of the mean and of the IQM.
A difference whose CI includes 0 is marked "not distinguishable" (≈) there and in the paper table; a cell
too small for a CI says so. The same numbers go to ``<table>_stats.csv`` and the HTML report.
"""
from __future__ import annotations

import pandas as pd

from framework.stats import CONFIDENCE, MIN_SEEDS, RESAMPLES, Estimate

#: the mark for "not distinguishable from the reference" (the CI of the difference includes 0)
SAME_MD, SAME_TEX = "≈", r"\approx"
STATS_COLUMNS = ("protocol", "model_row", "label", "column", "kind", "n", "mean", "ci_low", "ci_high",
                 "reference", "diff", "diff_low", "diff_high", "p_improve", "distinguishable", "p_permutation", "paper_mean",
                 "paper_std", "paper_in_ci", "iqm", "iqm_low", "iqm_high", "no_ci_reason")


def not_distinguishable(table, row, task: str) -> bool:
    """True when the row's difference to its reference on ``task`` has a CI that includes 0."""
    stats = table.row_stats(row)
    comparison = None if stats is None else stats.versus.get(task)
    return comparison is not None and comparison.distinguishable is False


def paper_check(table, row, column: str) -> str:
    """"paper in our CI [lo, hi]" / "paper outside our CI [lo, hi]" for a task or an average column, or ""
    without a CI or a paper number. The paper's mean ± std is a summary, not seeds: only its mean is tested."""
    stats = table.row_stats(row)
    if stats is None:
        return ""
    if column in row.cells:
        ci, paper = stats.ours[column], row.cells[column].paper_mean
    else:
        ci, paper = stats.aggregates[column].mean, row.paper_value(column)
    inside = ci.contains(paper)
    if inside is None:
        return ""
    return f"paper {'in' if inside else 'outside'} our CI [{ci.low:.2f}, {ci.high:.2f}]"


def stats_caption(table) -> str:
    refs = "; ".join(f"{model}: {label}" for model, label in table.references.items()) or "none"
    return (f"Differences to the reference row (reference: {refs}) with {CONFIDENCE:.0%} percentile bootstrap "
            f"CIs over seeds ({RESAMPLES:,} resamples, each row's seeds resampled independently) and P(X > ref) "
            f"over seed pairs; {SAME_MD} = not distinguishable (the CI includes 0). Averages: the mean and the IQM "
            f"over tasks with stratified bootstrap CIs (seeds resampled within each task). Cells with fewer than "
            f"{MIN_SEEDS} seeds get no CI. With few seeds the bootstrap CI is too narrow (about 80% coverage at "
            f"3 seeds, tests/test_stats.py): read {SAME_MD}-free cells with 3–5 seeds as a hint, not a finding; "
            f"the CSV adds an exact permutation test's p-value, which keeps its level (3 vs 3 seeds: p ≥ 0.1).")


def _task_text(table, row, task: str, same: str) -> str:
    stats = table.row_stats(row)
    if row.cells[task].n == 0:
        return "—"
    if stats.is_reference:
        return "reference"
    comparison = stats.versus.get(task)
    if comparison is None:
        return "no reference row"
    text = comparison.difference.show(signed=True)
    if comparison.distinguishable is False:
        text += f" {same} not distinguishable"
    if comparison.improvement is not None:
        text += f", P={comparison.improvement:.2f}"
    return text


def _average_text(table, row, avg) -> str:
    aggregate = table.row_stats(row).aggregates[avg.name]
    if aggregate.mean.value is None:
        return "—"
    if not aggregate.mean.has_ci:
        return f"mean {aggregate.mean.value:.2f}, IQM {aggregate.iqm.value:.2f} (no CI: {aggregate.mean.reason})"
    return f"mean {aggregate.mean.show()}; IQM {aggregate.iqm.show()}"


def stats_rows(table, same: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the statistics table: tasks, then the averages."""
    spec = table.spec
    head = ["Model", "Method", *(t.title for t in spec.tasks), *(f"{a.title} (CI)" for a in spec.averages)]
    rows = [[row.model_row, row.label, *(_task_text(table, row, t.name, same) for t in spec.tasks),
             *(_average_text(table, row, a) for a in spec.averages)] for row in table.rows]
    return head, rows


def stats_markdown(table) -> list[str]:
    head, rows = stats_rows(table, SAME_MD)
    out = [f"#### {table.spec.title} — statistics ({table.protocol})", "", stats_caption(table), "",
           "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return out + [""]


def stats_latex(table, tex_escape) -> list[str]:
    head, rows = stats_rows(table, "SAME")
    out = [r"\begin{table*}[t]", r"\centering", r"\small",
           rf"\caption{{{tex_escape(table.spec.title + ' statistics, split protocol: ' + table.protocol + '. ' + stats_caption(table))}}}",
           r"\resizebox{\textwidth}{!}{%", r"\begin{tabular}{ll" + "r" * (len(head) - 2) + "}", r"\toprule",
           " & ".join(tex_escape(h) for h in head) + r" \\", r"\midrule"]
    for cells in rows:
        out.append(" & ".join(tex_escape(c).replace("SAME", f"${SAME_TEX}$") for c in cells) + r" \\")
    return out + [r"\bottomrule", r"\end{tabular}}", r"\end{table*}", ""]


def _ci_fields(prefix: str, estimate: Estimate | None) -> dict:
    if estimate is None:
        return {}
    return {prefix: estimate.value, f"{prefix}_low": estimate.low, f"{prefix}_high": estimate.high}


def stats_frame(tables) -> pd.DataFrame:
    """One row per (table row, task or average) with every statistic: the ``<table>_stats.csv``."""
    records = []
    for table in tables:
        for row in table.rows:
            stats = table.row_stats(row)
            base = {"protocol": table.protocol, "model_row": row.model_row, "label": row.label,
                    "reference": table.references.get(row.model_row)}
            for task in table.spec.task_names:
                cell, ours, comparison = row.cells[task], stats.ours[task], stats.versus.get(task)
                if cell.n == 0:
                    continue
                record = {**base, "column": task, "kind": "task", "n": cell.n,
                          "mean": ours.value, "ci_low": ours.low, "ci_high": ours.high,
                          "paper_mean": cell.paper_mean, "paper_std": cell.paper_std,
                          "paper_in_ci": stats.paper_inside(task, cell.paper_mean), "no_ci_reason": ours.reason}
                if comparison is not None:
                    record.update(_ci_fields("diff", comparison.difference), p_improve=comparison.improvement,
                                  distinguishable=comparison.distinguishable, p_permutation=comparison.p_value)
                    record["no_ci_reason"] = record["no_ci_reason"] or comparison.difference.reason
                records.append(record)
            for avg in table.spec.averages:
                aggregate = stats.aggregates[avg.name]
                if aggregate.mean.value is None:
                    continue
                records.append({**base, "column": avg.name, "kind": "average",
                                "n": sum(row.cells[t].n for t in avg.tasks),
                                "mean": aggregate.mean.value, "ci_low": aggregate.mean.low,
                                "ci_high": aggregate.mean.high, **_ci_fields("iqm", aggregate.iqm),
                                "paper_mean": row.paper_value(avg.name), "no_ci_reason": aggregate.mean.reason,
                                "paper_in_ci": aggregate.mean.contains(row.paper_value(avg.name))})
    return pd.DataFrame(records, columns=list(STATS_COLUMNS))
