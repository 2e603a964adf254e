"""Table 2 from run JSONs: a tidy frame of runs, per-cell aggregation, and the paper's numbers beside ours.

Reads only ``results/`` (run JSONs, ``memory/*.csv``) and ``results/paper/table2.csv``; never torch.
Nothing is mixed silently: runs under different split protocols go to separate tables, and cells with
fewer seeds than configured, failed runs, runs from several commits/versions or from several configs
are marked and footnoted. Rendering lives in :mod:`framework.table_render`.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from framework.results import iter_results

TASKS = ("sst2", "mrpc", "cola", "qnli", "rte", "stsb")
TASK_TITLES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "rte": "RTE", "stsb": "STS-B"}
#: the metric Table 2 reports for each task (the paper's choice, not necessarily the selection metric)
TABLE2_METRIC = {"sst2": "accuracy", "mrpc": "accuracy", "qnli": "accuracy", "rte": "accuracy",
                 "cola": "matthews_correlation", "stsb": "pearson"}
MODEL_ROWS = {"roberta-base": "Base", "roberta-large": "Large"}
#: the paper's row order; labels not listed follow, alphabetically
METHOD_ORDER = ("Head", "BitFit", "(IA)3", "LoRA r=8", "VeRA r=1024", "VeRA r=256", "BOFT b=8 m=2",
                "C3A b=1", "C3A b=6", "C3A b=8", "Full")
METHOD_NAMES = {"c3a": "C3A", "lora": "LoRA", "vera": "VeRA", "boft": "BOFT", "ia3": "(IA)3",
                "bitfit": "BitFit", "full": "Full", "head": "Head"}
#: (shown name, config keys that may hold it) for labels built from a run's method config
LABEL_KEYS = {"c3a": (("b", ("b",)),), "lora": (("r", ("r",)),), "vera": (("r", ("r",)),),
              "boft": (("b", ("b", "block_size", "boft_block_size")),
                       ("m", ("m", "n_butterfly_factor", "boft_n_butterfly_factor")))}
DEFAULT_PAPER_CSV = Path(__file__).resolve().parent.parent / "results" / "paper" / "table2.csv"
GIB = 2 ** 30

RUN_COLUMNS = ("path", "run_id", "config_hash", "status", "model", "model_row", "method", "method_label",
               "task", "seed", "metric", "score", "params", "protocol", "leaky", "git_commit", "versions",
               "expected_seeds", "epochs", "selection_metric", "error")


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


def model_row(model: str) -> str:
    return MODEL_ROWS.get(model, model)


def protocol_key(split: dict) -> str:
    """The split protocol a run was made under; a leaky split counts as a protocol of its own."""
    protocol = str(split.get("protocol") or split.get("split") or "unrecorded")  # GlueTask records "split"
    return f"{protocol} (leaky)" if split.get("leaky") else protocol


def collect_runs(results_dir) -> pd.DataFrame:
    """One row per run JSON (completed and failed); ``score`` is the task's Table 2 metric ×100."""
    rows = []
    for path, result in iter_results(results_dir):
        metric = TABLE2_METRIC.get(result.task, result.selection_metric)
        value = result.test_at_best.get(metric) if metric else None
        parts = result.run_id.split("/")
        rows.append({
            "path": str(path), "run_id": result.run_id, "config_hash": parts[-2] if len(parts) >= 2 else "",
            "status": result.status, "model": result.model, "model_row": model_row(result.model),
            "method": result.method, "method_label": method_label(result), "task": result.task,
            "seed": result.seed, "metric": metric,
            "score": float(value) * 100 if value is not None else math.nan,
            "params": result.params.get("trainable_excl_head"),
            "protocol": protocol_key(result.split), "leaky": bool(result.split.get("leaky", False)),
            "git_commit": result.provenance.get("git_commit"),
            "versions": json.dumps(result.provenance.get("versions") or {}, sort_keys=True),
            "expected_seeds": result.config.get("expected_seeds"),
            "epochs": (result.config.get("trainer") or {}).get("epochs"),
            "selection_metric": result.selection_metric, "error": result.error,
        })
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def load_paper(csv_path=DEFAULT_PAPER_CSV) -> dict[tuple[str, str], dict]:
    """The paper's Table 2 rows keyed by (Base/Large, method label); empty when the file is absent."""
    path = Path(csv_path)
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    return {(row["model"], row["method_label"]): row for row in frame.to_dict("records")}


def load_memory(results_dir) -> dict[tuple[str, str], tuple[float, str]]:
    """Measured peak memory per (model, method label) in GiB and the device, a cuda measurement preferred.

    Several measurements of one key on the same kind of device: the largest peak is kept.
    """
    files = sorted((Path(results_dir) / "memory").glob("*.csv"))
    if not files:
        return {}
    frame = pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
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
    """One (model, method label) row of Table 2."""

    model: str
    model_row: str
    label: str
    cells: dict[str, Cell]
    params: list[int] = field(default_factory=list)  # distinct trainable_excl_head counts seen
    memory_gib: float | None = None
    memory_device: str | None = None
    paper: dict | None = None

    @property
    def present_tasks(self) -> list[str]:
        return [t for t in TASKS if self.cells[t].mean is not None]

    @property
    def avg(self) -> float | None:
        """Mean of the task means (over the present tasks when not all six are there)."""
        means = [self.cells[t].mean for t in self.present_tasks]
        return statistics.fmean(means) if means else None

    @property
    def avg_partial(self) -> bool:
        return 0 < len(self.present_tasks) < len(TASKS)

    def paper_value(self, key: str) -> float | None:
        value = None if self.paper is None else self.paper.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


@dataclass
class Table:
    """All rows made under one split protocol, plus failed runs and runs that could not be scored."""

    protocol: str
    rows: list[Row]
    failed: int = 0
    unscored: list[str] = field(default_factory=list)  # completed runs missing the Table 2 metric


def _row_sort_key(row: Row):
    model_rank = {"Base": 0, "Large": 1}.get(row.model_row, 2)
    label_rank = METHOD_ORDER.index(row.label) if row.label in METHOD_ORDER else len(METHOD_ORDER)
    return (model_rank, row.model_row, label_rank, row.label)


def _clean(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def aggregate(runs: pd.DataFrame, paper: dict | None = None, memory: dict | None = None,
              protocol: str | None = None) -> list[Table]:
    """Tables (one per protocol) of rows (model × method label) of cells (task), from :func:`collect_runs`."""
    paper, memory = paper or {}, memory or {}
    runs = runs[runs["task"].isin(TASKS)]
    if protocol is not None:
        runs = runs[runs["protocol"].str.split(" ").str[0] == protocol]
    tables = []
    for proto, proto_runs in runs.groupby("protocol", sort=True):
        done = proto_runs["status"] == "completed"
        scored = done & proto_runs["score"].notna()
        if not scored.any():
            continue
        table = Table(protocol=proto, rows=[], failed=int((proto_runs["status"] == "failed").sum()),
                      unscored=list(proto_runs.loc[done & ~scored, "run_id"]))
        for (model, label), group in proto_runs.groupby(["model", "method_label"], sort=False):
            row = Row(model=model, model_row=model_row(model), label=label, cells={t: Cell() for t in TASKS},
                      paper=paper.get((model_row(model), label)))
            for rec in group.to_dict("records"):
                cell = row.cells[rec["task"]]
                cell.seeds.add(rec["seed"])
                if _clean(rec["expected_seeds"]) is not None:
                    cell.expected = max(cell.expected or 0, int(rec["expected_seeds"]))
                if rec["status"] == "failed":
                    cell.failed += 1
                    continue
                if rec["status"] != "completed" or _clean(rec["score"]) is None:
                    continue
                cell.scores.append(float(rec["score"]))
                cell.commits.add(rec["git_commit"])
                cell.versions.add(rec["versions"])
                cell.configs.add(rec["config_hash"])
                if _clean(rec["params"]) is not None and int(rec["params"]) not in row.params:
                    row.params.append(int(rec["params"]))
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
        table.rows.sort(key=_row_sort_key)
        tables.append(table)
    return tables


def unplaced_failures(runs: pd.DataFrame, tables: list[Table], protocol: str | None = None) -> int:
    """Failed Table 2 runs whose protocol has no table (e.g. a run that failed before its split was made)."""
    shown = {t.protocol for t in tables}
    failed = runs[(runs["status"] == "failed") & runs["task"].isin(TASKS)]
    if protocol is not None:
        base = failed["protocol"].str.split(" ").str[0]
        failed = failed[(base == protocol) | (failed["protocol"] == "unrecorded")]
    return int((~failed["protocol"].isin(shown)).sum())


def build_tables(results_dir, paper_csv=DEFAULT_PAPER_CSV, protocol: str | None = None):
    """(tidy runs frame, tables) for a results directory."""
    runs = collect_runs(results_dir)
    return runs, aggregate(runs, load_paper(paper_csv), load_memory(results_dir), protocol=protocol)
