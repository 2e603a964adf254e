"""Per-task GLUE facts and the raw-data readers (original GLUE TSV files or the Hugging Face Hub).

Kept apart from ``glue.py`` so that the file formats, which are fiddly, live in one place:
CoLA has no header; MRPC starts with a UTF-8 byte-order mark and has its label first; STS-B has
10 columns; several files contain stray double quotes, so quoting is off (``csv.QUOTE_NONE``).
Labels follow the Hub's ``nyu-mll/glue`` encoding (QNLI/RTE: entailment=0, not_entailment=1).
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from framework import hub
from framework.tasks.rows import at_line, check_items, read_text

NLI_LABELS = {"entailment": 0, "not_entailment": 1}


@dataclass(frozen=True)
class TsvLayout:
    """How one task's train/dev TSV is laid out in the original GLUE distribution."""

    header: Optional[tuple[str, ...]]  # None: the file has no header row
    num_columns: int
    text_columns: tuple[int, ...]
    label_column: int
    label_kind: str  # "binary" (0/1) | "nli" (entailment/not_entailment) | "score" (float 0-5)


@dataclass(frozen=True)
class GlueTaskSpec:
    name: str
    folder: str  # folder name in the GLUE distribution
    hub_config: str
    text_fields: tuple[str, ...]  # column names in the Hub dataset
    num_labels: int
    is_regression: bool
    metric_keys: tuple[str, ...]
    selection_metric: str  # the paper's Table 2 metric
    tsv: TsvLayout


GLUE_TASKS: dict[str, GlueTaskSpec] = {
    "sst2": GlueTaskSpec(
        "sst2", "SST-2", "sst2", ("sentence",), 2, False, ("accuracy",), "accuracy",
        TsvLayout(("sentence", "label"), 2, (0,), 1, "binary"),
    ),
    "mrpc": GlueTaskSpec(
        "mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"), 2, False, ("accuracy", "f1"), "accuracy",
        TsvLayout(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), 5, (3, 4), 0, "binary"),
    ),
    "cola": GlueTaskSpec(
        "cola", "CoLA", "cola", ("sentence",), 2, False, ("matthews_correlation",),
        "matthews_correlation",
        TsvLayout(None, 4, (3,), 1, "binary"),
    ),
    "qnli": GlueTaskSpec(
        "qnli", "QNLI", "qnli", ("question", "sentence"), 2, False, ("accuracy",), "accuracy",
        TsvLayout(("index", "question", "sentence", "label"), 4, (1, 2), 3, "nli"),
    ),
    "rte": GlueTaskSpec(
        "rte", "RTE", "rte", ("sentence1", "sentence2"), 2, False, ("accuracy",), "accuracy",
        TsvLayout(("index", "sentence1", "sentence2", "label"), 4, (1, 2), 3, "nli"),
    ),
    "stsb": GlueTaskSpec(
        "stsb", "STS-B", "stsb", ("sentence1", "sentence2"), 1, True, ("pearson", "spearman"), "pearson",
        TsvLayout(
            ("index", "genre", "filename", "year", "old_index", "source1", "source2",
             "sentence1", "sentence2", "score"),
            10, (7, 8), 9, "score",
        ),
    ),
}


@dataclass
class RawSplit:
    """Texts (one list per text field) and labels of one split, before tokenisation."""

    texts: tuple[list[str], ...]
    labels: list

    def __len__(self) -> int:
        return len(self.labels)


def _parse_label(kind: str, value: str, where: str):
    if kind == "binary":
        if value not in ("0", "1"):
            raise ValueError(f"{where}: bad label {value!r}; expected 0 or 1")
        return int(value)
    if kind == "nli":
        if value not in NLI_LABELS:
            raise ValueError(f"{where}: bad label {value!r}; expected one of {list(NLI_LABELS)}")
        return NLI_LABELS[value]
    try:
        score = float(value)
    except ValueError:
        score = math.nan
    if not (0.0 <= score <= 5.0):
        raise ValueError(f"{where}: bad label {value!r}; expected a similarity score from 0 to 5")
    return score


def read_glue_tsv(path: Path, spec: GlueTaskSpec) -> RawSplit:
    """Parse one original-format GLUE train/dev file; errors name the file, line and expectation."""
    layout = spec.tsv
    texts: tuple[list[str], ...] = tuple([] for _ in layout.text_columns)
    labels: list = []
    # read_text drops MRPC's byte-order mark; QUOTE_NONE keeps stray double quotes as text.
    if not path.is_file():
        raise FileNotFoundError(f"GLUE {spec.folder} file {path} does not exist")
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            where = at_line(path, reader.line_num)
            if not row:  # blank line: no example on it
                continue
            if layout.header is not None and reader.line_num == 1:
                if tuple(row) != layout.header:
                    raise ValueError(
                        f"{where}: header {row} does not match the GLUE {spec.folder} layout; "
                        f"expected {list(layout.header)}"
                    )
                continue
            if len(row) != layout.num_columns:
                raise ValueError(
                    f"{where}: expected {layout.num_columns} tab-separated columns for GLUE "
                    f"{spec.folder}, got {len(row)}"
                )
            labels.append(_parse_label(layout.label_kind, row[layout.label_column], where))
            for column_texts, column in zip(texts, layout.text_columns):
                column_texts.append(row[column])
    if not labels:
        raise ValueError(f"{path}: no examples found (expected GLUE {spec.folder} rows)")
    return RawSplit(texts, labels)


def resolve_task_folder(data_dir: str | os.PathLike, spec: GlueTaskSpec) -> Path:
    """The folder holding train.tsv/dev.tsv: ``data_dir`` itself, or ``data_dir/<TASK>`` (GLUE root)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"task.data_dir={str(root)!r} does not exist or is not a folder; point it at the GLUE "
            f"{spec.folder} folder holding train.tsv and dev.tsv (e.g. task.data_dir=/path/to/GLUE/"
            f"{spec.folder}), or set task.data_dir=null to load {spec.hub_config} from the Hub"
        )
    for folder in (root, root / spec.folder):
        if (folder / "train.tsv").is_file() or (folder / "dev.tsv").is_file():
            missing = [name for name in ("train.tsv", "dev.tsv") if not (folder / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{folder} lacks {', '.join(missing)}; a GLUE {spec.folder} folder needs both "
                    f"train.tsv and dev.tsv in the original GLUE layout"
                )
            return folder
    raise FileNotFoundError(
        f"no train.tsv/dev.tsv in {root} or {root / spec.folder}; point task.data_dir at the GLUE "
        f"{spec.folder} folder (e.g. task.data_dir=/path/to/GLUE/{spec.folder})"
    )


def load_hub_splits(spec: GlueTaskSpec, hub_dataset: str) -> dict[str, RawSplit]:
    """GLUE train and validation (used as our dev) from the Hub or the local datasets cache."""
    hint = (
        f"To use local files instead, set task.data_dir=/path/to/GLUE/{spec.folder} "
        f"(a folder with train.tsv and dev.tsv in the original GLUE layout)."
    )
    offline = hub.offline()
    if not offline and not hub.reachable():
        raise ConnectionError(
            f"The Hugging Face Hub ({hub.endpoint()}) is unreachable, so {hub_dataset}/{spec.hub_config} "
            f"cannot be downloaded. Set HF_DATASETS_OFFLINE=1 to use a copy already in the datasets "
            f"cache. {hint}"
        )
    import datasets

    try:
        loaded = datasets.load_dataset(hub_dataset, spec.hub_config)
    except OSError as error:  # ConnectionError, missing cache entries, ...
        mode = "offline mode (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)" if offline else "online mode"
        raise ConnectionError(
            f"Could not load {hub_dataset}/{spec.hub_config} in {mode}: {error}. {hint}"
        ) from error
    splits = {}
    for ours, theirs in (("train", "train"), ("dev", "validation")):
        if theirs not in loaded:
            raise ValueError(f"{hub_dataset}/{spec.hub_config} has no {theirs!r} split: {list(loaded)}")
        part = loaded[theirs]
        missing = [c for c in (*spec.text_fields, "label") if c not in part.column_names]
        if missing:
            raise ValueError(
                f"{hub_dataset}/{spec.hub_config} split {theirs!r} lacks columns {missing}; "
                f"expected {[*spec.text_fields, 'label']}"
            )
        texts, labels = tuple(list(part[c]) for c in spec.text_fields), list(part["label"])
        where = f"{hub_dataset}/{spec.hub_config} split {theirs!r}"
        for column, values in zip(spec.text_fields, texts):
            check_items(values, str, where, f"column {column!r}", each="row")
        check_items(labels, (int, float) if spec.is_regression else int, where, "column 'label'", each="row")
        splits[ours] = RawSplit(texts, labels)
    return splits
