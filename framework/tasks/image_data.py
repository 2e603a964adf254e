"""Image-classification data readers: class folders, CSV files, Hub datasets, scikit-learn's digits.

Every reader returns ``ImageSource`` objects (images + integer labels + where each image came from), so
the task (``image.py``) splits, checks and batches them the same way whatever the layout:

- folder: ``<dir>/<class name>/<image>``, one folder per class (files with an image extension; other
  files are counted and recorded, never read);
- CSV: a header with ``path`` and ``label`` columns, paths relative to the CSV file, labels are class names;
- Hub: an image column and a label column (``ClassLabel`` names, or integers, or strings);
- ``sklearn_digits``: the 1,797 8×8 digit images shipped inside scikit-learn (values 0-16 → 0-255).

``check_images`` decodes every image once before any compute, so an unreadable or truncated file is
reported by name; its result (the colour modes seen) is cached under ``cache_dir`` by the listing's
fingerprint (paths, sizes, modification times, or the data's content hash).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from framework import hub
from framework.tasks.rows import at_line, check_items, check_row, read_text

#: what PIL raises for a file that is no image, a truncated one, or one whose header claims a decompression bomb
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
CHECK_FORMAT_VERSION = 1


def _unreadable(where: str, err: Exception) -> ValueError:
    return ValueError(f"{where}: cannot read the image ({type(err).__name__}: {err}); replace or remove the file")


def _decode(opener, where: str):
    """Fully decode one image (``load()`` reads every byte, so truncation shows here), naming it on failure."""
    try:
        image = opener()
        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        image.load()
        return image
    except (*UNREADABLE, TypeError) as err:
        raise _unreadable(where, err) from err


def read_image(path: str | Path):
    """The fully decoded image in a file (the file closed again); a ``ValueError`` naming it when it is unreadable."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except UNREADABLE as err:
        raise _unreadable(str(path), err) from err


class ImageSource(ABC):
    """A list of images with integer labels; ``open(i)`` returns the decoded PIL image."""

    def __init__(self, labels: Sequence[int], name: str):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def where(self, index: int) -> str:
        """Where image ``index`` comes from, for error messages (a file path, a Hub row...)."""

    @abstractmethod
    def _open(self, index: int):
        """The PIL image (possibly not yet decoded)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Changes whenever the images or labels change (the key of the cached image check)."""

    def open(self, index: int):
        return _decode(lambda: self._open(index), self.where(index))


class FileImages(ImageSource):
    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], name: str):
        super().__init__(labels, name)
        self.paths = [str(p) for p in paths]

    def where(self, index: int) -> str:
        return self.paths[index]

    def _open(self, index: int):
        return Image.open(self.paths[index])

    def open(self, index: int):
        return read_image(self.paths[index])

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
        return digest.hexdigest()


class ArrayImages(ImageSource):
    """In-memory uint8 arrays (H, W) or (H, W, C)."""

    def __init__(self, arrays: np.ndarray, labels: Sequence[int], name: str):
        super().__init__(labels, name)
        self.arrays = np.ascontiguousarray(arrays, dtype=np.uint8)

    def where(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def _open(self, index: int):
        return Image.fromarray(self.arrays[index])

    def fingerprint(self) -> str:
        return hashlib.sha256(self.arrays.tobytes() + self.labels.tobytes()).hexdigest()


class HubImages(ImageSource):
    """One split of a Hub dataset; images are decoded by ``datasets`` on access."""

    def __init__(self, dataset, image_column: str, labels: Sequence[int], name: str):
        super().__init__(labels, name)
        self.dataset, self.image_column = dataset, image_column

    def where(self, index: int) -> str:
        return f"{self.name} row {index + 1}"

    def _open(self, index: int):
        return self.dataset[int(index)][self.image_column]

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.name}\0{getattr(self.dataset, '_fingerprint', '')}\0".encode()
                              + self.labels.tobytes()).hexdigest()


class PooledImages(ImageSource):
    """Several sources end to end (e.g. a dataset's train and test pooled, to be re-cut)."""

    def __init__(self, sources: Sequence[ImageSource], name: str):
        super().__init__(np.concatenate([s.labels for s in sources]) if sources else [], name)
        self.sources = list(sources)
        self.starts = np.cumsum([0] + [len(s) for s in sources])

    def _locate(self, index: int) -> tuple[ImageSource, int]:
        part = int(np.searchsorted(self.starts, index, side="right") - 1)
        return self.sources[part], int(index - self.starts[part])

    def where(self, index: int) -> str:
        source, local = self._locate(index)
        return source.where(local)

    def _open(self, index: int):
        source, local = self._locate(index)
        return source._open(local)

    def open(self, index: int):
        source, local = self._locate(index)
        return source.open(local)

    def fingerprint(self) -> str:
        return hashlib.sha256("".join(s.fingerprint() for s in self.sources).encode()).hexdigest()


def require_two_classes(names: Sequence[str], origin: str) -> list[str]:
    """The class names, when there are at least two: with one, every prediction is right and accuracy says 1.0."""
    if len(names) < 2:
        raise ValueError(f"{origin}: one class found: {list(names)}; a classification task needs at least two "
                         f"(e.g. one folder per class: <data>/train/cat/, <data>/train/dog/)")
    return list(names)


def _label_error(label, where: str, classes: Sequence[str]) -> ValueError:
    shown = list(classes) if len(classes) <= 50 else [*classes[:50], f"... ({len(classes)} in all)"]
    return ValueError(f"{where}: label {label!r} is not in the class list {shown}")


# ---------------------------------------------------------------------------------------- folders
def class_folders(root: Path) -> list[str]:
    """The class folder names under ``root`` (sorted; hidden folders skipped)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"image folder {root} has no class folders: expected {root}/<class name>/<image files>")
    return names


def read_class_folders(root: Path, classes: Sequence[str], name: str) -> tuple[FileImages, int]:
    """Every image under ``root/<class>/``; returns the source and the count of non-image files skipped."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, skipped = [], [], 0
    for folder in class_folders(root):
        if folder not in index:
            raise _label_error(folder, f"class folder {root / folder}", classes)
        files = sorted(p for p in (root / folder).iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped += len(files) - len(images)
        if not images:
            raise ValueError(f"class folder {root / folder} is empty: it has no image files "
                             f"({', '.join(IMAGE_EXTENSIONS)}); remove the folder or add its images")
        paths.extend(images)
        labels.extend([index[folder]] * len(images))
    return FileImages(paths, labels, name), skipped


# -------------------------------------------------------------------------------------------- CSV
def csv_labels(path: Path) -> list[str]:
    """The label column of a ``path,label`` CSV (for building the class list)."""
    return [row[1] for row in _csv_rows(path)]


def _csv_rows(path: Path) -> list[tuple[str, str, str]]:
    """``(image path, label, where)`` per row; ``where`` is ``<file>, line N``."""
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: the header must name the columns 'path' and 'label' "
                             f"(found {reader.fieldnames}); missing {sorted(missing)}")
        rows = []
        for row in reader:  # a short row has None for its missing columns: check_row names them
            where = at_line(path, reader.line_num)
            check_row(row, {"path": str, "label": str}, where, "path,label CSV")
            if not row["path"].strip() or not row["label"].strip():
                raise ValueError(f"{where}: empty {'path' if not row['path'].strip() else 'label'}; every row "
                                 f"names an image file and its class")
            rows.append((row["path"], row["label"], where))
    if not rows:
        raise ValueError(f"{path} has a header but no rows")
    return rows


def read_csv(path: Path, classes: Sequence[str], name: str) -> FileImages:
    """Images listed in a ``path,label`` CSV; relative paths are taken from the CSV's folder."""
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for image_path, label, where in _csv_rows(path):
        if label not in index:
            raise _label_error(label, where, classes)
        full = (path.parent / image_path) if not os.path.isabs(image_path) else Path(image_path)
        if not full.is_file():
            raise FileNotFoundError(f"{where}: image {full} does not exist")
        paths.append(full)
        labels.append(index[label])
    return FileImages(paths, labels, name)


# -------------------------------------------------------------------------------------------- Hub
def load_hub(dataset_id: str, config: Optional[str], splits: dict[str, str], image_column: str,
             label_column: str, classes: Optional[Sequence[str]]) -> tuple[dict[str, HubImages], list[str]]:
    """``{our split: HubImages}`` and the class names, from the Hub or the local datasets cache."""
    label = f"{dataset_id}" + (f"/{config}" if config else "")
    hint = ("To use local files instead, set task.source=folder (or csv) and task.data_dir=/path/to/images "
            "(train/ and test/ folders with one folder per class).")
    if not hub.offline() and not hub.reachable():
        raise ConnectionError(f"The Hugging Face Hub ({hub.endpoint()}) is unreachable, so {label} cannot be "
                              f"downloaded. Set HF_DATASETS_OFFLINE=1 to use a copy already in the datasets "
                              f"cache. {hint}")
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id, config)
    except (OSError, ValueError) as err:  # ConnectionError, missing cache entries, unknown config
        mode = "offline mode (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE)" if hub.offline() else "online mode"
        raise ConnectionError(f"Could not load {label} in {mode}: {err}. {hint}") from err
    out: dict[str, HubImages] = {}
    names: Optional[list[str]] = list(classes) if classes is not None else None
    for ours, theirs in splits.items():
        if theirs not in loaded:
            raise ValueError(f"{label} has no split {theirs!r} (task.hub_splits.{ours}); it has {list(loaded)}")
        part = loaded[theirs]
        missing = [c for c in (image_column, label_column) if c not in part.column_names]
        if missing:
            raise ValueError(f"{label} split {theirs!r} lacks the columns {missing} (task.image_column / "
                             f"task.label_column); its columns are {part.column_names}")
        feature = part.features[label_column]
        raw = list(part[label_column])
        check_items(raw, (int, str), f"{label} split {theirs!r}", f"column {label_column!r}", each="row")
        integers = hasattr(feature, "names") or all(isinstance(v, (int, np.integer)) for v in raw)
        if names is None:  # ClassLabel names; else ids 0..max; else the sorted label strings
            names = require_two_classes(
                list(feature.names) if hasattr(feature, "names")
                else [str(i) for i in range(max(raw) + 1)] if integers else sorted({str(v) for v in raw}),
                f"{label} split {theirs!r} column {label_column!r}")
        if integers:
            labels = [int(v) for v in raw]
            bad = next((i for i, v in enumerate(labels) if not 0 <= v < len(names)), None)
            if bad is not None:
                raise _label_error(labels[bad], f"{label} split {theirs!r} row {bad + 1}", names)
        else:
            lookup = {c: i for i, c in enumerate(names)}
            bad = next((i for i, v in enumerate(raw) if str(v) not in lookup), None)
            if bad is not None:
                raise _label_error(raw[bad], f"{label} split {theirs!r} row {bad + 1}", names)
            labels = [lookup[str(v)] for v in raw]
        out[ours] = HubImages(part, image_column, labels, f"{label}:{theirs}")
    return out, list(names or [])


# ---------------------------------------------------------------------------------- sklearn digits
def load_sklearn_digits() -> tuple[ArrayImages, list[str]]:
    """scikit-learn's 1,797 8×8 handwritten digits as grayscale images (ink 16 → 255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    arrays = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ArrayImages(arrays, digits.target, "sklearn.datasets.load_digits"), [str(c) for c in digits.target_names]


# ------------------------------------------------------------------------------------ image check
def check_images(source: ImageSource, cache_dir: Optional[Path]) -> dict[str, Any]:
    """Decode every image once (named error on a bad one); returns ``{"count", "modes"}``, cached."""
    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{CHECK_FORMAT_VERSION}\0{source.fingerprint()}".encode()).hexdigest()
        cache_file = Path(cache_dir) / "image_checks" / f"{key[:24]}.json"
        if cache_file.is_file():
            return json.loads(cache_file.read_text(encoding="utf-8"))
    modes: Counter = Counter()
    for index in range(len(source)):
        modes[source.open(index).mode] += 1
    summary = {"count": len(source), "modes": dict(sorted(modes.items()))}
    if cache_file is not None:
        from framework.io import atomic_write_text

        atomic_write_text(cache_file, json.dumps(summary))
    return summary
