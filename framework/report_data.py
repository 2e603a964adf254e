"""What the reproduction report shows, gathered from result files, the paper table specs and memory CSVs.

Nothing here trains, composes a config or imports torch: the report must build offline from what a run
left behind. :mod:`framework.report` turns these frames into HTML, :mod:`framework.report_plots` into
figures.
"""
from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import pandas as pd

from framework.paper_tables import TableSpec
from framework.results import RunResult, iter_results
from framework.stats import MIN_SEEDS
from framework.tables import GIB, Table, method_label, protocol_key

ROOT = Path(__file__).resolve().parent.parent
#: where `make memory` / `make memory-estimate` write (scripts/measure_memory.py)
DEFAULT_MEMORY_DIRS = (ROOT / "results" / "memory", ROOT / "results" / "memory_estimates")


def load_runs(results_dir) -> list[tuple[Path, RunResult]]:
    return list(iter_results(results_dir))


def error_line(error: str | None) -> str:
    """The last non-empty line of a failed run's error (the exception itself, after the traceback)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    return lines[-1] if lines else "(no error recorded)"


def failed_runs(runs) -> pd.DataFrame:
    rows = [{"run": r.run_id, "error": error_line(r.error)} for _, r in runs if r.status == "failed"]
    return pd.DataFrame(rows, columns=["run", "error"])


def memory_files(results_dir, memory_dirs=DEFAULT_MEMORY_DIRS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured, estimated) memory rows: CSVs with ``peak_bytes`` are measurements, with ``total_gib``
    estimates; from ``<results_dir>/memory`` and each of ``memory_dirs`` (each file once)."""
    files = sorted({p.resolve() for d in (Path(results_dir) / "memory", *map(Path, memory_dirs))
                    for p in d.glob("*.csv")})
    measured, estimated = [], []
    for path in files:
        frame = pd.read_csv(path).assign(file=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
        if "peak_bytes" in frame.columns:
            measured.append(frame.assign(peak_gib=frame["peak_bytes"] / GIB))
        elif "total_gib" in frame.columns:
            estimated.append(frame)
    concat = lambda frames: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()  # noqa: E731
    return concat(measured), concat(estimated)


def speed_and_memory(runs) -> pd.DataFrame:
    """Per (model, method label, task): completed runs, median train samples/s and train time, the largest
    peak memory the runs recorded (its kind: cuda, or the process's peak RSS on CPU), the devices."""
    groups: dict[tuple, list[RunResult]] = {}
    for _, r in runs:
        if r.status == "completed":
            groups.setdefault((r.model, method_label(r), r.task), []).append(r)
    rows = []
    for (model, label, task), results in sorted(groups.items()):
        speeds = [r.timing["train_samples_per_s"] for r in results if r.timing.get("train_samples_per_s")]
        times = [r.timing["train_time_s"] for r in results if r.timing.get("train_time_s")]
        peaks = [(r.memory["peak_bytes"], r.memory.get("kind", "")) for r in results if r.memory.get("peak_bytes")]
        peak = max(peaks) if peaks else (None, "")
        rows.append({"model": model, "method": label, "task": task, "runs": len(results),
                     "train_samples_per_s": statistics.median(speeds) if speeds else None,
                     "train_time_s": statistics.median(times) if times else None,
                     "peak_gib": peak[0] / GIB if peak[0] else None, "memory_kind": peak[1],
                     "devices": ", ".join(sorted({str(r.provenance.get("device") or "?") for r in results}))})
    return pd.DataFrame(rows, columns=["model", "method", "task", "runs", "train_samples_per_s", "train_time_s",
                                       "peak_gib", "memory_kind", "devices"])


def run_command(spec: TableSpec, row, task: str, seeds: int) -> str:
    """The command that fills one (declared row, task) cell."""
    parts = ["python run.py -m", *row.overrides_for_compose(), f"task={spec.task(task).task}",
             "seed=" + ",".join(str(s) for s in range(seeds))]
    return " ".join(parts)


def missing_cells(spec: TableSpec, tables: list[Table]) -> pd.DataFrame:
    """Every (row, task) with no completed seed, and the command that fills it: declared rows get their
    preset's command (seeds: as many as the table's runs intend, at least the 3 a CI needs); a row of ours
    the spec does not declare is named with what to change."""
    present = {}
    for table in tables:
        for row in table.rows:
            for task, cell in row.cells.items():
                present[(row.model_row, row.label, task)] = max(present.get((row.model_row, row.label, task), 0), cell.n)
    # as many seeds as this table's runs intend, and never fewer than a CI needs
    seeds = max([MIN_SEEDS] + [c.expected or 0 for t in tables for r in t.rows for c in r.cells.values()])
    records = []
    for row in spec.rows:
        model_row = spec.model_row(row.model)
        for column in spec.tasks:
            if not present.get((model_row, row.label, column.name)):
                records.append({"row": f"{model_row} {row.label}", "column": column.title,
                                "command": run_command(spec, row, column.name, seeds)})
    declared = {(spec.model_row(r.model), r.label) for r in spec.rows}
    for table in tables:
        for row in table.rows:
            if (row.model_row, row.label) in declared:
                continue
            for column in spec.tasks:
                if not row.cells[column.name].n:
                    records.append({"row": f"{row.model_row} {row.label}", "column": column.title,
                                    "command": f"not a declared row of {spec.title}: rerun the config of this row's "
                                               f"runs with task={column.task}"})
    frame = pd.DataFrame(records, columns=["row", "column", "command"])
    return frame.drop_duplicates()


def _fingerprints(details: dict, prefix: str = "") -> dict[str, str]:
    """Every ``*sha256*`` / ``*fingerprint*`` value in a task description (data files the split was cut from)."""
    found = {}
    for key, value in details.items():
        if isinstance(value, dict):
            found.update(_fingerprints(value, f"{prefix}{key}."))
        elif isinstance(value, str) and ("sha256" in key or "fingerprint" in key):
            found[prefix + key] = value
    return found


def _counts(values, column: str) -> pd.DataFrame:
    counter = Counter(values)
    return pd.DataFrame([{column: k, "runs": n} for k, n in sorted(counter.items(), key=lambda kv: -kv[1])],
                        columns=[column, "runs"])


def provenance(runs, tables_by_spec: dict[str, list[Table]]) -> dict[str, pd.DataFrame]:
    """Frames by section title: commits, package versions, devices, split protocols, data fingerprints,
    mixed-commit and mixed-config cells, failed runs."""
    commits = [f"{(r.provenance.get('git_commit') or 'unknown')[:10]}"
               + (" (dirty tree)" if r.provenance.get("git_dirty") else "") for _, r in runs]
    versions = [", ".join(f"{k} {v}" for k, v in sorted((r.provenance.get("versions") or {}).items()) if v)
                for _, r in runs]
    devices = [" / ".join(str(r.provenance.get(k)) for k in ("device", "processor", "cpu_count", "platform")
                          if r.provenance.get(k) is not None) or "unrecorded" for _, r in runs]
    protocols = [f"{r.task}: {protocol_key(r.task_details or {})}" for _, r in runs]
    prints = [f"{r.task}: " + "; ".join(f"{k} {v[:12]}" for k, v in sorted(_fingerprints(r.task_details or {}).items()))
              for _, r in runs]
    mixed = []
    for name, tables in tables_by_spec.items():
        for table in tables:
            for row in table.rows:
                for task, cell in row.cells.items():
                    if cell.mixed_provenance or cell.mixed_configs:
                        mixed.append({"table": f"{name} ({table.protocol})", "cell": f"{row.model_row} {row.label} {task}",
                                      "commits": ", ".join(sorted(str(c)[:8] for c in cell.commits)),
                                      "version sets": len(cell.versions), "configs": len(cell.configs)})
    return {
        "Commits": _counts(commits, "commit"),
        "Package versions": _counts(versions, "versions"),
        "Devices": _counts(devices, "device / processor / CPUs / platform"),
        "Split protocols": _counts(protocols, "task: protocol"),
        "Data fingerprints (SHA-256, first 12 hex digits)": _counts(prints, "task: files"),
        "Mixed-commit and mixed-config cells": pd.DataFrame(mixed, columns=["table", "cell", "commits", "version sets",
                                                                            "configs"]),
        "Failed runs": failed_runs(runs),
    }


def curves(runs) -> pd.DataFrame:
    """One row per (run, epoch): the selection metric on validation and, where the run recorded it, on test."""
    rows = []
    for _, r in runs:
        metric = r.selection_metric
        for epoch in r.epochs:
            rows.append({"model": r.model, "method": method_label(r), "task": r.task, "seed": r.seed,
                         "metric": metric, "epoch": epoch.get("epoch"), "val": (epoch.get("val") or {}).get(metric),
                         "test": (epoch.get("test") or {}).get(metric),
                         "best_epoch": r.best_epoch, "test_at_best": r.test_at_best.get(metric)})
    return pd.DataFrame(rows, columns=["model", "method", "task", "seed", "metric", "epoch", "val", "test",
                                       "best_epoch", "test_at_best"])


def summary(runs) -> dict[str, int]:
    status = Counter(r.status for _, r in runs)
    return {"runs": len(runs), "completed": status.get("completed", 0), "failed": status.get("failed", 0),
            "tasks": len({r.task for _, r in runs}), "methods": len({(r.model, method_label(r)) for _, r in runs})}
