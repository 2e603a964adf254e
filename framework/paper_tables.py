"""Paper table specs: each paper table is declared once, in ``paper_tables/<name>.yaml`` plus a CSV of the
paper's numbers. (A run preset is something else: ``conf/experiment/``, which a spec row names.)

``make table2`` / ``make_table.py --table <name>``, ``make params`` and ``make memory`` all read these specs;
nothing else lists a table's rows, tasks or metrics. A spec (YAML)::

    title: Table 2                      # heading of the rendered table
    caption: GLUE test scores at the best validation epoch   # what a score is (the renderer adds the rest)
    paper_csv: table2.csv               # the paper's numbers, relative to this file (columns below)
    scale: 100                          # our metric values are multiplied by this (fractions -> points)
    params: count                       # how the paper states parameters: count | percent | millions
    memory: "the paper: GPU, 256 tokens, batch 64"   # optional: show a memory column; what the paper measured
    figure: figure1.png                 # optional: average vs parameters and vs memory plot
    models: {roberta-base: Base}        # model entry (conf/model) -> row name, in the paper's order
    tasks:                              # columns, in the paper's order; metric: a key of the run's test scores
      - {name: rte, title: RTE, metric: accuracy}
      - {name: boolq, title: BoolQ, metric: boolq, task: commonsense}   # task: when one task scores
                                                                        # several columns (its test sets)
    averages:                           # optional; default: one "Avg" over every task column
      - {name: avg, title: Avg, tasks: [rte]}
    rows:                               # the paper's rows, in its order
      - model: roberta-base             # the model entry the row runs on
        label: C3A b=6                  # the paper's method label (our runs record the same label)
        preset: table2/base_c3a_b6      # composed as run.py does: experiment=<preset> (conf/experiment/)
        overrides: []                   # optional: more Hydra overrides after the preset
        params: millions                # optional: this row's paper figure is of another kind

The paper CSV has one row per (row name, method label): columns ``model`` (the row name), ``method_label``,
``params`` (the figure as the paper prints it, in the spec's unit: 110592, 0.35, 85.8), optionally
``memory_gb``, ``<name>_mean`` for every task column and optionally ``<name>_std``, one column per average
(``avg``, ``math_avg``...), and free ``source`` / ``note``. Empty cells are "not given"; a non-number
(``OOM``) is shown as is. A spec with ``tasks: []`` only declares parameter counts (``make params``).

Params kinds: ``count`` is an exact trainable count (excluding the head) and must match exactly;
``percent`` (% of all parameters of the adapted model) and ``millions`` are checked at the precision
the paper prints (``0.35`` -> two decimals, ``124`` -> none).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parent.parent
TABLES_DIR = ROOT / "paper_tables"
CONF_DIR = ROOT / "conf"
PARAMS_KINDS = ("count", "percent", "millions")
_TOP_KEYS = {"title", "caption", "paper_csv", "scale", "params", "memory", "figure", "models", "tasks", "averages",
             "rows"}
_ROW_KEYS = {"model", "label", "preset", "overrides", "params"}


class SpecError(ValueError):
    """A table spec or its paper CSV is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class TaskColumn:
    name: str  # the column's id (paper CSV ``<name>_mean``); the run's task name unless ``task`` says otherwise
    title: str  # the column heading
    metric: str  # the key of the run's test_at_best the column shows
    task: str  # the run's task name (task.name)


@dataclass(frozen=True)
class Average:
    name: str  # the paper CSV column
    title: str
    tasks: tuple[str, ...]


@dataclass(frozen=True)
class SpecRow:
    model: str
    label: str
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    params: str = "count"

    def overrides_for_compose(self) -> list[str]:
        """Hydra overrides as run.py would get them on its command line."""
        return ([f"experiment={self.preset}"] if self.preset else []) + list(self.overrides)


@dataclass(frozen=True)
class ParamsFigure:
    """A parameter figure as the paper prints it, and how ours compares with it."""

    kind: str
    text: str

    @property
    def value(self) -> float | None:
        """The number, or None when the paper printed a word (``OOM``)."""
        try:
            return float(self.text.replace(",", ""))
        except ValueError:
            return None

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])

    def ours(self, trainable: int, total: int | None) -> float | None:
        """Our count in this figure's unit (None: a percentage without the model's total)."""
        if self.kind == "count":
            return float(trainable)
        if self.kind == "millions":
            return trainable / 1e6
        return None if not total else 100.0 * trainable / total

    def matches(self, trainable: int, total: int | None) -> bool | None:
        """Equal at the paper's precision (exact for a count); None when there is nothing to compare."""
        ours = self.ours(trainable, total)
        if self.value is None or ours is None:
            return None
        if self.kind == "count":
            return int(ours) == int(self.value)
        return round(ours, self.decimals) == self.value

    def show(self) -> str:
        if self.value is None:
            return self.text
        return {"count": f"{self.value:,.0f}", "percent": f"{self.text}%", "millions": f"{self.text}M"}[self.kind]


def show_ours(kind: str, trainable: int, total: int | None) -> str:
    """Our figure in a kind's unit, one decimal more precise than the paper usually prints."""
    if kind == "count":
        return f"{trainable:,}"
    if kind == "millions":
        return f"{trainable / 1e6:.2f}M"
    return f"{100.0 * trainable / total:.3f}%" if total else f"{trainable:,}"


@dataclass
class TableSpec:
    name: str  # the file stem: output files are named after it
    path: Path
    title: str
    caption: str
    paper_csv: Path
    scale: float
    params: str
    memory: str | None
    figure: str | None
    models: dict[str, str]
    tasks: list[TaskColumn]
    averages: list[Average]
    rows: list[SpecRow]
    paper: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (row name, label) -> CSV cells

    @property
    def task_names(self) -> list[str]:
        """The column ids, in order (Table 2: the GLUE task names)."""
        return [t.name for t in self.tasks]

    @property
    def run_tasks(self) -> list[str]:
        """The task names whose runs the table reads, in order (one task may fill several columns)."""
        return list(dict.fromkeys(t.task for t in self.tasks))

    def task(self, name: str) -> TaskColumn:
        return next(t for t in self.tasks if t.name == name)

    def model_row(self, model: str) -> str:
        """The row name of a model entry; an entry the table does not list is shown under its own name."""
        return self.models.get(model, model)

    def paper_row(self, model_row: str, label: str) -> dict[str, Any] | None:
        return self.paper.get((model_row, label))

    def params_kind(self, model_row: str, label: str) -> str:
        row = next((r for r in self.rows if self.model_row(r.model) == model_row and r.label == label), None)
        return row.params if row is not None else self.params

    def paper_params(self, model_row: str, label: str) -> ParamsFigure | None:
        paper = self.paper_row(model_row, label)
        text = None if paper is None else paper.get("params")
        return None if text in (None, "") else ParamsFigure(self.params_kind(model_row, label), str(text))

    def row_rank(self, model_row: str, label: str) -> tuple:
        """Sort key: the model's place in ``models``, then the row's place in ``rows``; rows the spec does not
        declare follow, in the order their label first appears in the spec, then alphabetically."""
        names = list(self.models.values())
        model_rank = names.index(model_row) if model_row in names else len(names)
        declared = [r.label for r in self.rows if self.model_row(r.model) == model_row]
        if label in declared:
            return (model_rank, model_row, 0, declared.index(label), label)
        labels = list(dict.fromkeys(r.label for r in self.rows))
        return (model_rank, model_row, 1, labels.index(label) if label in labels else len(labels), label)


# ------------------------------------------------------------------------------------------- loading
def _fail(path: Path, where: str, message: str) -> SpecError:
    return SpecError(f"{path}: {where}: {message}")


def _string(path: Path, where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(path, where, f"expected a non-empty string, got {value!r}")
    return value


def _keys(path: Path, where: str, entry, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(entry, Mapping):
        raise _fail(path, where, f"expected a mapping, got {entry!r}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise _fail(path, where, f"unknown key(s) {unknown}; valid keys: {sorted(allowed)}")
    missing = sorted(required - set(entry))
    if missing:
        raise _fail(path, where, f"missing key(s) {missing}")
    return dict(entry)


def _params_kind(path: Path, where: str, value) -> str:
    if value not in PARAMS_KINDS:
        raise _fail(path, where, f"{value!r} is not a params kind; valid kinds: {list(PARAMS_KINDS)}")
    return value


def _presets() -> list[str]:
    folder = CONF_DIR / "experiment"
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml"))


def _row(path: Path, index: int, entry, models: dict, default_params: str, presets: list[str]) -> SpecRow:
    where = f"rows[{index}]"
    entry = _keys(path, where, entry, _ROW_KEYS, {"model", "label"})
    model = _string(path, f"{where}.model", entry["model"])
    if model not in models:
        raise _fail(path, f"{where}.model", f"{model!r} is not in models {list(models)}")
    preset = entry.get("preset")
    if preset is not None and _string(path, f"{where}.preset", preset) not in presets:
        near = [p for p in presets if p.split("/")[0] == preset.split("/")[0]] or presets
        raise _fail(path, f"{where}.preset", f"{preset!r} is not a preset under {CONF_DIR / 'experiment'}; "
                                             f"presets: {near}")
    overrides = entry.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise _fail(path, f"{where}.overrides", f"expected a list of Hydra overrides, got {overrides!r}")
    if preset is None and not overrides:
        raise _fail(path, where, "give a preset (experiment=<preset>) or overrides to compose the row with")
    params = _params_kind(path, f"{where}.params", entry.get("params", default_params))
    return SpecRow(model, _string(path, f"{where}.label", entry["label"]), preset, tuple(overrides), params)


def _cell(text: str | None):
    """A CSV cell: None when empty, a float when it is a number, else the text (``OOM``)."""
    if text is None or not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        return text.strip()


def _load_paper(spec: TableSpec) -> dict[tuple[str, str], dict[str, Any]]:
    path = spec.paper_csv
    if not path.is_file():
        raise _fail(spec.path, "paper_csv", f"{path} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        records = list(reader)
    needed = ["model", "method_label", *(f"{t}_mean" for t in spec.task_names)]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SpecError(f"{path}: missing column(s) {missing} (the spec {spec.path.name} names these tasks)")
    numeric = [c for c in columns if c.endswith(("_mean", "_std")) or c in ("memory_gb", *(a.name for a in spec.averages))]
    paper: dict[tuple[str, str], dict[str, Any]] = {}
    for line, record in enumerate(records, start=2):
        key = (record["model"], record["method_label"])
        if key in paper:
            raise SpecError(f"{path}: line {line}: row {key} appears twice")
        cells = {c: _cell(v) for c, v in record.items() if c != "params"}
        cells["params"] = (record.get("params") or "").strip()  # as printed: its digits set the precision
        if any(ch.isdigit() for ch in cells["params"]) and ParamsFigure("count", cells["params"]).value is None:
            raise SpecError(f"{path}: line {line}: column params: {cells['params']!r} is neither a number (write it "
                            f"in the spec's unit, e.g. 0.35 for 0.35%, 124 for 124M) nor a word such as OOM")
        for column in numeric:
            if isinstance(cells.get(column), str):
                raise SpecError(f"{path}: line {line}: column {column}: {cells[column]!r} is not a number")
        paper[key] = cells
    for index, row in enumerate(spec.rows):
        if (spec.model_row(row.model), row.label) not in paper:
            raise _fail(spec.path, f"rows[{index}]", f"no row model={spec.model_row(row.model)!r}, "
                                                      f"method_label={row.label!r} in {path}")
    return paper


def load_spec(name_or_path: str | Path, folder: Path = TABLES_DIR) -> TableSpec:
    """A table spec by name (``table2`` -> ``paper_tables/table2.yaml``) or by path, validated with its CSV."""
    import yaml

    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(folder) / f"{name_or_path}.yaml"
    if not path.is_file():
        raise SpecError(f"no table spec {path}; tables: {available(folder)}")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data = _keys(path, "top level", data, _TOP_KEYS, {"title", "paper_csv", "models", "tasks", "rows"})
    models = data["models"]
    if not isinstance(models, Mapping) or not models:
        raise _fail(path, "models", f"expected a mapping model entry -> row name, got {models!r}")
    models = {_string(path, "models", k): _string(path, f"models.{k}", v) for k, v in models.items()}
    if not isinstance(data["tasks"], list):
        raise _fail(path, "tasks", f"expected a list of {{name, title, metric}}, got {data['tasks']!r}")
    tasks = []
    for i, entry in enumerate(data["tasks"]):
        entry = _keys(path, f"tasks[{i}]", entry, {"name", "title", "metric", "task"}, {"name", "title", "metric"})
        entry.setdefault("task", entry["name"])
        tasks.append(TaskColumn(*(_string(path, f"tasks[{i}].{k}", entry[k]) for k in ("name", "title", "metric", "task"))))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise _fail(path, "tasks", f"a task is listed twice: {names}")
    averages = [Average("avg", "Avg", tuple(names))] if tasks and "averages" not in data else []
    for i, entry in enumerate(data.get("averages") or []):
        entry = _keys(path, f"averages[{i}]", entry, {"name", "title", "tasks"}, {"name", "title", "tasks"})
        unknown = [t for t in entry["tasks"] or [] if t not in names]
        if not entry["tasks"] or unknown:
            raise _fail(path, f"averages[{i}].tasks", f"expected tasks among {names}, got {entry['tasks']!r}")
        averages.append(Average(_string(path, f"averages[{i}].name", entry["name"]),
                                _string(path, f"averages[{i}].title", entry["title"]), tuple(entry["tasks"])))
    scale = data.get("scale", 100)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise _fail(path, "scale", f"expected a positive number, got {scale!r}")
    params = _params_kind(path, "params", data.get("params", "count"))
    if not isinstance(data["rows"], list) or not data["rows"]:
        raise _fail(path, "rows", "expected a non-empty list of rows")
    presets = _presets()
    rows = [_row(path, i, entry, models, params, presets) for i, entry in enumerate(data["rows"])]
    keys = [(r.model, r.label) for r in rows]
    if len(set(keys)) != len(keys):
        raise _fail(path, "rows", f"a (model, label) is declared twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    memory, figure = data.get("memory"), data.get("figure")
    spec = TableSpec(
        name=path.stem, path=path, title=_string(path, "title", data["title"]),
        caption=str(data.get("caption") or f"{data['title']} scores"),
        paper_csv=path.parent / _string(path, "paper_csv", data["paper_csv"]), scale=float(scale), params=params,
        memory=None if memory is None else _string(path, "memory", memory),
        figure=None if figure is None else _string(path, "figure", figure),
        models=models, tasks=tasks, averages=averages, rows=rows)
    spec.paper = _load_paper(spec)
    return spec


def available(folder: Path = TABLES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.yaml"))


def load_all(folder: Path = TABLES_DIR) -> list[TableSpec]:
    return [load_spec(name, folder) for name in available(folder)]


# ------------------------------------------------------------------------ building a declared row
def compose_row(row: SpecRow, extra_overrides: tuple[str, ...] | list[str] = ()):
    """The row's run config, composed as ``run.py`` composes it (Hydra's runtime fields set so that every
    interpolation resolves). Unless ``extra_overrides`` swap the model, the preset must run ``row.model``."""
    from framework.compose import compose_config

    overrides = [*row.overrides_for_compose(), *extra_overrides]
    cfg = compose_config(overrides)
    swapped = any(o.split("=", 1)[0].lstrip("+~") == "model" for o in extra_overrides)
    if not swapped and cfg.model.name != row.model:
        raise SpecError(f"row {row.model} {row.label!r}: composing {overrides} gives model {cfg.model.name!r}, "
                        f"not {row.model!r}")
    return cfg


def build_row(row: SpecRow, weights: str, extra_overrides: tuple[str, ...] | list[str] = ()):
    """Compose the row and assemble it as the pipeline does (``framework.assembly.assemble``; ``weights``:
    ``"meta"`` to count, ``"random"`` to train), without the run's input checks: the row may be built on a
    stand-in model (``extra_overrides``). Returns the ``Assembly``."""
    from framework.assembly import assemble

    return assemble(compose_row(row, extra_overrides), weights, check_input=False)
