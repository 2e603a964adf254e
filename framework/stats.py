"""How sure a table is: bootstrap confidence intervals over seeds, paired with a reference row.

The paper shows mean ± std; a reader cannot tell from that whether two rows differ. For every table this
module gives, per task, each row's difference to a reference row (by default the table's C3A row of the same
model) with a 95% percentile bootstrap CI over seeds (``scipy.stats.bootstrap``, the seeds of each row
resampled independently) and the probability of improvement P(X > ref) (the Mann-Whitney U statistic over
n·m seed pairs, ``scipy.stats.mannwhitneyu``); per average, the stratified bootstrap CI of the mean and of the
IQM over tasks as rliable computes them (tasks are strata, seeds are resampled within each).
A cell with fewer than :data:`MIN_SEEDS` seeds gets no CI and says why.

Why not rliable itself: rliable 1.2.0 (the newest) pins ``arch<8``, and arch 7.2 fails to import under
pandas 3 (``deprecate_kwarg()`` changed); scipy's multi-sample bootstrap does the same stratified resampling,
and without rliable's need for the same number of seeds in every task.

Every resampling is seeded (:data:`SEED`), so a table is the same each time it is built. With few seeds the
percentile bootstrap covers less than its nominal 95% (tests/test_stats.py measures about 80% at 3 seeds,
87% at 5 and 93% at 10 for two identical normal methods): "distinguishable" with 3 seeds is weak evidence.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
MIN_SEEDS = 3
RESAMPLES = 10_000
SEED = 0
DEFAULT_REFERENCE = "C3A"


class StatsError(ValueError):
    """A statistics option that names nothing in the table (raised before any resampling)."""


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its 95% CI, or with the reason it has none."""

    value: float | None
    low: float | None = None
    high: float | None = None
    reason: str | None = None

    @property
    def has_ci(self) -> bool:
        return self.low is not None and self.high is not None

    def contains(self, x: float | None) -> bool | None:
        """Whether ``x`` lies inside the CI (None without a CI or without ``x``)."""
        if not self.has_ci or x is None:
            return None
        return self.low <= x <= self.high

    def show(self, signed: bool = False) -> str:
        fmt = "{:+.2f}" if signed else "{:.2f}"
        if self.value is None:
            return "—"
        text = fmt.format(self.value)
        if self.has_ci:
            return f"{text} [{fmt.format(self.low)}, {fmt.format(self.high)}]"
        return f"{text} (no CI: {self.reason})"


def too_few(counts: dict[str, int]) -> str | None:
    """Why no CI can be given (the first of ``counts`` — whose: seed count — below :data:`MIN_SEEDS`), or None."""
    for whose, n in counts.items():
        if n < MIN_SEEDS:
            return f"{whose}only {n} seed{'s' if n != 1 else ''} (a CI needs {MIN_SEEDS})"
    return None


def _rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def _percentile_ci(samples, statistic) -> tuple[float, float]:
    with warnings.catch_warnings():  # identical seeds: a zero-width CI, not an error
        warnings.simplefilter("ignore", scipy_stats.DegenerateDataWarning)
        res = scipy_stats.bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                                    method="percentile", vectorized=True, rng=_rng())
    low, high = res.confidence_interval
    return float(low), float(high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def mean_interval(scores: list[float]) -> Estimate:
    """The mean over seeds with its bootstrap CI."""
    if not scores:
        return Estimate(None, reason="no completed seeds")
    value = float(np.mean(scores))
    reason = too_few({"": len(scores)})
    if reason:
        return Estimate(value, reason=reason)
    return Estimate(value, *_percentile_ci((np.asarray(scores, float),), _mean))


def difference_interval(scores: list[float], reference: list[float]) -> Estimate:
    """mean(scores) - mean(reference) with a bootstrap CI; the two rows' seeds are resampled independently
    (seed k of one method has nothing to do with seed k of another)."""
    if not scores or not reference:
        return Estimate(None, reason="no completed seeds" if not scores else "the reference has no seeds")
    value = float(np.mean(scores) - np.mean(reference))
    reason = too_few({"": len(scores), "reference: ": len(reference)})
    if reason:
        return Estimate(value, reason=reason)
    return Estimate(value, *_percentile_ci((np.asarray(scores, float), np.asarray(reference, float)), _difference))


def improvement_probability(scores: list[float], reference: list[float]) -> float | None:
    """P(X > ref) + ½·P(X = ref) over all pairs of seeds: the Mann-Whitney U statistic / (n·m), as rliable's
    probability of improvement computes it per task."""
    if not scores or not reference:
        return None
    u = scipy_stats.mannwhitneyu(scores, reference, alternative="two-sided").statistic
    return float(u) / (len(scores) * len(reference))


def permutation_p_value(scores: list[float], reference: list[float]) -> float | None:
    """Two-sided p-value of the difference of means under "the two rows are exchangeable"
    (``scipy.stats.permutation_test``; exact when there are fewer distinct splits than resamples). Unlike the
    bootstrap CI it keeps its level with few seeds — and shows their limit: with 3 seeds against 3 the smallest
    possible p is 0.1. None below :data:`MIN_SEEDS` seeds on either side."""
    if too_few({"": len(scores), "reference: ": len(reference)}):
        return None
    res = scipy_stats.permutation_test((np.asarray(scores, float), np.asarray(reference, float)), _difference,
                                       permutation_type="independent", alternative="two-sided", vectorized=True,
                                       n_resamples=RESAMPLES, rng=_rng())
    return float(res.pvalue)


def _task_means_mean(*tasks, axis=-1):
    return np.mean([np.mean(t, axis=axis) for t in tasks], axis=0)


def _pooled_iqm(*tasks, axis=-1):
    """The interquartile mean of all (seed, task) scores (rliable's aggregate_iqm: a 25% trimmed mean)."""
    return scipy_stats.trim_mean(np.concatenate(tasks, axis=axis), 0.25, axis=axis)


@dataclass(frozen=True)
class Aggregate:
    """Across tasks: the mean of task means and the IQM of all (seed, task) scores, each with its stratified
    bootstrap CI."""

    mean: Estimate
    iqm: Estimate


def aggregate_intervals(columns: dict[str, list[float]]) -> Aggregate:
    """The stratified bootstrap over tasks: each task's seeds are resampled with replacement within that
    task (``scipy.stats.bootstrap`` with one sample per task, resampled independently), and the mean of task
    means and the pooled IQM are recomputed on every resample. Tasks without seeds are left out (the
    table marks such an average as partial)."""
    present = {task: np.asarray(scores, float) for task, scores in columns.items() if scores}
    if not present:
        return Aggregate(Estimate(None, reason="no completed seeds"), Estimate(None, reason="no completed seeds"))
    samples = tuple(present.values())
    mean, iqm = float(_task_means_mean(*samples)), float(_pooled_iqm(*samples))
    reason = too_few({f"{task}: ": len(scores) for task, scores in present.items()})
    if reason:
        return Aggregate(Estimate(mean, reason=reason), Estimate(iqm, reason=reason))
    return Aggregate(Estimate(mean, *_percentile_ci(samples, _task_means_mean)),
                     Estimate(iqm, *_percentile_ci(samples, _pooled_iqm)))


@dataclass(frozen=True)
class Comparison:
    """One cell against the reference row's cell of the same task."""

    reference: str
    difference: Estimate
    improvement: float | None
    p_value: float | None = None  # the exact permutation test's (see permutation_p_value)

    @property
    def distinguishable(self) -> bool | None:
        """False when the CI of the difference includes 0; None without a CI."""
        inside = self.difference.contains(0.0)
        return None if inside is None else not inside


@dataclass
class RowStats:
    """A row's statistics: our mean's CI per task, the comparison to the reference per task (absent for the
    reference itself), and the CIs of its averages by average name."""

    ours: dict[str, Estimate] = field(default_factory=dict)
    versus: dict[str, Comparison] = field(default_factory=dict)
    aggregates: dict[str, Aggregate] = field(default_factory=dict)
    is_reference: bool = False

    def paper_inside(self, task: str, paper_mean: float | None) -> bool | None:
        """Whether the paper's mean lies inside our CI for ``task`` (None without a CI or a paper number)."""
        estimate = self.ours.get(task)
        return None if estimate is None else estimate.contains(paper_mean)


def _matches(label: str, wanted: str) -> bool:
    return label == wanted or label.startswith(wanted + " ")


def choose_references(rows, wanted: str | None = None) -> dict[str, str]:
    """The reference label per model row: the row labelled ``wanted`` (default "C3A": any "C3A …" label);
    several matches → the one with the most completed seeds, then the first in the table's order. A model
    row without a match has no reference."""
    chosen: dict[str, tuple[int, str]] = {}
    for row in rows:
        if not _matches(row.label, wanted or DEFAULT_REFERENCE):
            continue
        seeds = sum(c.n for c in row.cells.values())
        if row.model_row not in chosen or seeds > chosen[row.model_row][0]:
            chosen[row.model_row] = (seeds, row.label)
    return {model_row: label for model_row, (_, label) in chosen.items()}


def check_reference(labels, wanted: str | None) -> None:
    """An explicit reference must name (or prefix) the label of some run: else a clear error, before any
    resampling, with the labels there are. (A table whose rows do not include it has no reference row.)"""
    labels = sorted(set(labels))
    if wanted is not None and labels and not any(_matches(label, wanted) for label in labels):
        raise StatsError(f"reference {wanted!r} names no run's method (a label, or its first word); "
                         f"choose one of: {', '.join(labels)}")


def table_stats(rows, tasks: list[str], averages, references: dict[str, str]) -> dict[tuple[str, str], RowStats]:
    """RowStats for every (model row, label) of a table's rows (framework.tables.Row)."""
    by_key = {(r.model_row, r.label): r for r in rows}
    out = {}
    for row in rows:
        ref_label = references.get(row.model_row)
        ref = by_key.get((row.model_row, ref_label)) if ref_label else None
        result = RowStats(is_reference=ref is row)
        for task in tasks:
            scores = row.cells[task].by_seed
            result.ours[task] = mean_interval(scores)
            if ref is not None and ref is not row and scores:
                ref_scores = ref.cells[task].by_seed
                result.versus[task] = Comparison(ref_label, difference_interval(scores, ref_scores),
                                                 improvement_probability(scores, ref_scores),
                                                 permutation_p_value(scores, ref_scores))
        for avg in averages:
            result.aggregates[avg.name] = aggregate_intervals({t: row.cells[t].by_seed for t in avg.tasks})
        out[(row.model_row, row.label)] = result
    return out
