"""A paper table from run JSONs: a tidy frame of runs, per-cell aggregation, and the paper's numbers beside ours.

What a table holds (tasks, metrics, scale, model rows, row order, the paper's numbers) comes from its spec,
``paper_tables/<name>.yaml`` with its CSV (format: :mod:`framework.paper_tables`), so Table 2, the LLaMA
tables and the ViT table are built by this same code. Reads only ``results/`` (run JSONs,
``memory/*.csv``) and the spec; never torch. Nothing is mixed silently: runs under different split
protocols go to separate tables, and cells with fewer seeds than configured, failed runs, runs from
several commits/versions or from several configs are marked and footnoted. Rendering lives in
:mod:`framework.table_render`.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from framework.paper_tables import Average, ParamsFigure, TableSpec
from framework.results import iter_results
from framework.stats import RowStats, choose_references, table_stats

METHOD_NAMES = {"c3a": "C3A", "lora": "LoRA", "vera": "VeRA", "boft": "BOFT", "ia3": "(IA)3",
                "bitfit": "BitFit", "full": "Full", "head": "Head"}
#: (shown name, config keys that may hold it) for labels built from a run's method config
LABEL_KEYS = {"c3a": (("b", ("b",)),), "lora": (("r", ("r",)),), "vera": (("r", ("r",)),),
              "boft": (("b", ("b", "block_size", "boft_block_size")),
                       ("m", ("m", "n_butterfly_factor", "boft_n_butterfly_factor")))}
GIB = 2 ** 30

RUN_COLUMNS = ("path", "run_id", "config_hash", "status", "model", "model_row", "method", "method_label",
               "task", "column", "seed", "metric", "score", "params", "params_total", "protocol", "leaky", "git_commit",
               "versions", "expected_seeds", "epochs", "selection_metric", "error")


def method_label(result) -> str:
    """The run's recorded label, else one built from its method config (name plus its b / r / m)."""
    if getattr(result, "method_label", ""):
        return result.method_label
    cfg = result.config.get("method") or {}
    name = str(cfg.get("name") or result.method)
    parts = [METHOD_NAMES.get(name, name)]
    for shown, keys in LABEL_KEYS.get(name, ()):
        value = next((cfg[k] for k in keys if cfg.get(k) is not None), None)
        if value is not None:
            parts.append(f"{shown}={value}")
    return " ".join(parts)


def protocol_key(task_details: dict) -> str:
    """The split protocol a run was made under (from the task's description); a leaky split is its own protocol."""
    protocol = str(task_details.get("protocol") or task_details.get("split") or "unrecorded")  # GlueTask: "split"
    return f"{protocol} (leaky)" if task_details.get("leaky") else protocol


def _run_record(path, result, spec: TableSpec, column) -> dict:
    metric = column.metric if column is not None else result.selection_metric
    value = result.test_at_best.get(metric) if metric else None
    parts = result.run_id.split("/")
    details = result.task_details or {}
    return {
        "path": str(path), "run_id": result.run_id, "config_hash": parts[-2] if len(parts) >= 2 else "",
        "status": result.status, "model": result.model, "model_row": spec.model_row(result.model),
        "method": result.method, "method_label": method_label(result), "task": result.task,
        "column": column.name if column is not None else result.task, "seed": result.seed, "metric": metric,
        "score": float(value) * spec.scale if value is not None else math.nan,
        "params": result.params.get("trainable_excl_head"), "params_total": result.params.get("total"),
        "protocol": protocol_key(details), "leaky": bool(details.get("leaky", False)),
        "git_commit": result.provenance.get("git_commit"),
        "versions": json.dumps(result.provenance.get("versions") or {}, sort_keys=True),
        "expected_seeds": result.config.get("expected_seeds"),
        "epochs": (result.config.get("trainer") or {}).get("epochs"),
        "selection_metric": result.selection_metric, "error": result.error,
    }


def collect_runs(results_dir, spec: TableSpec) -> pd.DataFrame:
    """One row per run JSON and table column it fills (completed and failed): ``score`` is the column's metric
    × the spec's scale. A run of a task the table does not show gets one row with its selection metric."""
    columns: dict[str, list] = {}
    for column in spec.tasks:
        columns.setdefault(column.task, []).append(column)
    rows = [_run_record(path, result, spec, column) for path, result in iter_results(results_dir)
            for column in columns.get(result.task) or [None]]
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def load_memory(results_dir, memory_dirs=()) -> dict[tuple[str, str], tuple[float, str]]:
    """Measured peak memory per (model, method label) in GiB and the device, a cuda measurement preferred,
    from ``<results_dir>/memory/*.csv`` and the measurement CSVs (those with ``peak_bytes``) in ``memory_dirs``.

    Several measurements of one key on the same kind of device: the largest peak is kept.
    """
    files = sorted({p.resolve() for d in (Path(results_dir) / "memory", *map(Path, memory_dirs)) for p in d.glob("*.csv")})
    frames = [frame for frame in map(pd.read_csv, files) if "peak_bytes" in frame.columns]
    if not frames:
        return {}
    frame = pd.concat(frames, ignore_index=True)
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for row in frame.to_dict("records"):
        key, device = (str(row["model"]), str(row["method_label"])), str(row["device"])
        gib = float(row["peak_bytes"]) / GIB
        if key not in best:
            best[key] = (gib, device)
            continue
        old_gib, old_device = best[key]
        is_cuda, was_cuda = "cuda" in device.lower(), "cuda" in old_device.lower()
        if (is_cuda and not was_cuda) or (is_cuda == was_cuda and gib > old_gib):
            best[key] = (gib, device)
    return best


@dataclass
class Cell:
    """One (row, task) cell: the completed scores of its seeds and everything that qualifies them."""

    scores: list[float] = field(default_factory=list)
    score_seeds: list = field(default_factory=list)  # the seed of each score, in the same order
    seeds: set = field(default_factory=set)  # seeds attempted (completed or failed)
    failed: int = 0
    expected: int | None = None
    commits: set = field(default_factory=set)
    versions: set = field(default_factory=set)
    configs: set = field(default_factory=set)
    paper_mean: float | None = None
    paper_std: float | None = None

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def by_seed(self) -> list[float]:
        """The scores ordered by seed (what the statistics resample)."""
        return [score for _, score in sorted(zip(self.score_seeds, self.scores), key=lambda p: p[0])]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.scores) if self.scores else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof=1); None for a single seed."""
        return statistics.stdev(self.scores) if len(self.scores) > 1 else None

    @property
    def short(self) -> bool:
        return self.expected is not None and 0 < self.n < self.expected

    @property
    def mixed_provenance(self) -> bool:
        return len(self.commits) > 1 or len(self.versions) > 1

    @property
    def mixed_configs(self) -> bool:
        return len(self.configs) > 1

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.paper_mean is None else self.mean - self.paper_mean


@dataclass
class Row:
    """One (model, method label) row of a table; ``cells`` in the spec's task order."""

    model: str
    model_row: str
    label: str
    cells: dict[str, Cell]
    averages: list[Average] = field(default_factory=list)
    params: list[int] = field(default_factory=list)  # distinct trainable_excl_head counts seen
    params_total: int | None = None  # all parameters of the adapted model (for a percentage)
    params_kind: str = "count"
    paper_params: ParamsFigure | None = None
    memory_gib: float | None = None
    memory_device: str | None = None
    paper: dict | None = None

    def present(self, tasks) -> list[str]:
        return [t for t in tasks if self.cells[t].mean is not None]

    def average(self, avg: Average) -> float | None:
        """Mean of the task means (over the present tasks when not all are there)."""
        means = [self.cells[t].mean for t in self.present(avg.tasks)]
        return statistics.fmean(means) if means else None

    def average_partial(self, avg: Average) -> bool:
        return 0 < len(self.present(avg.tasks)) < len(avg.tasks)

    @property
    def avg(self) -> float | None:
        """The table's first average (Table 2: over all six tasks)."""
        return self.average(self.averages[0]) if self.averages else None

    @property
    def avg_partial(self) -> bool:
        return bool(self.averages) and self.average_partial(self.averages[0])

    def paper_value(self, key: str) -> float | None:
        value = None if self.paper is None else self.paper.get(key)
        return value if isinstance(value, float) and not math.isnan(value) else None


@dataclass
class Table:
    """All rows of one spec made under one split protocol, plus failed runs and runs that could not be scored."""

    spec: TableSpec
    protocol: str
    rows: list[Row]
    failed: int = 0
    unscored: list[str] = field(default_factory=list)  # completed runs missing the table's metric
    references: dict[str, str] = field(default_factory=dict)  # model row -> the label of its reference row
    stats: dict[tuple[str, str], RowStats] = field(default_factory=dict)  # (model row, label) -> statistics

    def row_stats(self, row: Row) -> RowStats | None:
        return self.stats.get((row.model_row, row.label))


def _clean(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _new_row(spec: TableSpec, model: str, label: str) -> Row:
    name = spec.model_row(model)
    return Row(model=model, model_row=name, label=label, cells={t: Cell() for t in spec.task_names},
               averages=list(spec.averages), params_kind=spec.params_kind(name, label),
               paper_params=spec.paper_params(name, label), paper=spec.paper_row(name, label))


def aggregate(runs: pd.DataFrame, spec: TableSpec, memory: dict | None = None,
              protocol: str | None = None, reference: str | None = None) -> list[Table]:
    """Tables (one per protocol) of rows (model × method label) of cells (the spec's tasks), from
    :func:`collect_runs`, with their statistics against ``reference`` (default: each model's C3A row;
    :mod:`framework.stats`; a model without a matching row has no reference, and its cells say so)."""
    memory = memory or {}
    runs = runs[runs["task"].isin(spec.run_tasks)]
    if protocol is not None:
        runs = runs[runs["protocol"].str.split(" ").str[0] == protocol]
    tables = []
    for proto, proto_runs in runs.groupby("protocol", sort=True):
        done = proto_runs["status"] == "completed"
        scored = done & proto_runs["score"].notna()
        if not scored.any():
            continue
        table = Table(spec=spec, protocol=proto, rows=[],
                      failed=proto_runs.loc[proto_runs["status"] == "failed", "run_id"].nunique(),
                      unscored=list(dict.fromkeys(proto_runs.loc[done & ~scored, "run_id"])))
        for (model, label), group in proto_runs.groupby(["model", "method_label"], sort=False):
            row = _new_row(spec, model, label)
            for rec in group.to_dict("records"):
                cell = row.cells[rec["column"]]
                cell.seeds.add(rec["seed"])
                if _clean(rec["expected_seeds"]) is not None:
                    cell.expected = max(cell.expected or 0, int(rec["expected_seeds"]))
                if rec["status"] == "failed":
                    cell.failed += 1
                    continue
                if rec["status"] != "completed" or _clean(rec["score"]) is None:
                    continue
                cell.scores.append(float(rec["score"]))
                cell.score_seeds.append(rec["seed"])
                cell.commits.add(rec["git_commit"])
                cell.versions.add(rec["versions"])
                cell.configs.add(rec["config_hash"])
                if _clean(rec["params"]) is not None and int(rec["params"]) not in row.params:
                    row.params.append(int(rec["params"]))
                if _clean(rec["params_total"]) is not None:
                    row.params_total = int(rec["params_total"])
            row_max_seeds = max(len(c.seeds) for c in row.cells.values())
            for task, cell in row.cells.items():
                # the configured count, or the most seeds any task of this row has, whichever is larger
                cell.expected = max(cell.expected or 0, row_max_seeds)
                cell.paper_mean = row.paper_value(f"{task}_mean")
                cell.paper_std = row.paper_value(f"{task}_std")
            if (model, label) in memory:
                row.memory_gib, row.memory_device = memory[(model, label)]
            if any(c.n for c in row.cells.values()) or any(c.failed for c in row.cells.values()):
                table.rows.append(row)
        table.rows.sort(key=lambda r: spec.row_rank(r.model_row, r.label))
        table.references = choose_references(table.rows, reference)
        table.stats = table_stats(table.rows, spec.task_names, spec.averages, table.references)
        tables.append(table)
    return tables


def unplaced_failures(runs: pd.DataFrame, tables: list[Table], spec: TableSpec, protocol: str | None = None) -> int:
    """Failed runs of the spec's tasks whose protocol has no table (e.g. a run that failed before its split
    was made)."""
    shown = {t.protocol for t in tables}
    failed = runs[(runs["status"] == "failed") & runs["task"].isin(spec.run_tasks)]
    if protocol is not None:
        base = failed["protocol"].str.split(" ").str[0]
        failed = failed[(base == protocol) | (failed["protocol"] == "unrecorded")]
    return failed.loc[~failed["protocol"].isin(shown), "run_id"].nunique()


def run_labels(results_dir) -> set[str]:
    """The method label of every run in a results folder (what ``--reference`` may name)."""
    return {method_label(result) for _, result in iter_results(results_dir)}


def build_tables(results_dir, spec: TableSpec, protocol: str | None = None, reference: str | None = None,
                 memory_dirs=()):
    """(tidy runs frame, tables) of one spec for a results directory (memory also from ``memory_dirs``)."""
    runs = collect_runs(results_dir, spec)
    return runs, aggregate(runs, spec, load_memory(results_dir, memory_dirs), protocol=protocol, reference=reference)
