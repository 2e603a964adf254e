"""What every data reader checks, in one place: a file's text and each row's fields, with errors that say where.

The convention of every reader's errors: ``<file>, line N`` with N counted from 1, as an editor shows it
(a TOML problem is one file, so its errors name the file; a Hub row is ``hub <id>, row N``, also from 1).
Errors are ``ValueError``s: the pipeline reports them as input errors, before any compute.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any, Mapping, Union

Kinds = Union[type, tuple[type, ...]]
KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
              dict: "an object", type(None): "null"}


def at_line(origin: str | Path, line: int) -> str:
    """``<file>, line N`` (N from 1): where a row or a problem is."""
    return f"{origin}, line {line}"


def read_text(path: Path) -> str:
    """The file's text (``.gz`` decompressed, a UTF-8 byte-order mark dropped); a bad gzip stream or bytes that
    are not UTF-8 are errors naming the file (and the line of the first bad byte)."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: not a readable gzip file ({type(err).__name__}: {err}); the name ends in .gz, "
                         f"so it must be gzip-compressed and complete") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{at_line(path, line)}: not UTF-8 text (byte {data[err.start:err.start + 1]!r} at offset "
                         f"{err.start}); save the file as UTF-8") from None


def kind_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return next((name for kind, name in KIND_NAMES.items() if isinstance(value, kind)), type(value).__name__)


def _is(value: Any, kinds: Kinds) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to a data file
        return False
    return isinstance(value, kinds)


def _kinds_text(kinds: Kinds) -> str:
    return " or ".join(KIND_NAMES.get(k, k.__name__) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))


def _shown(value: Any) -> str:
    """``null``, or the value and its kind: ``5 (an integer)``."""
    if value is None:
        return "null"
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind_name(value)})"


def check_row(row: Any, required: Mapping[str, Kinds], where: str, what: str,
              optional: Mapping[str, Kinds] | None = None) -> dict:
    """``row`` as a dict whose ``required`` keys are present with values of their kinds, and whose ``optional``
    keys are absent, null or of theirs; else a ``ValueError`` naming ``where``, the field, the kind and the value."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a {what} row must be an object with the keys {list(required)}; "
                         f"got {_shown(row)}")
    missing = [key for key in required if key not in row]
    if missing:
        raise ValueError(f"{where}: a {what} row needs keys {list(required)}; missing {missing} "
                         f"(row keys: {sorted(map(str, row))})")
    present = {key: kinds for key, kinds in (optional or {}).items() if row.get(key) is not None}
    for key, kinds in (*required.items(), *present.items()):
        if not _is(row[key], kinds):
            raise ValueError(f"{where}: a {what} row needs {key!r} as {_kinds_text(kinds)}; "
                             f"got {_shown(row[key])}")
    return row


def check_items(values: list, kinds: Kinds, where: str, what: str, each: str = "item") -> None:
    """Every element of a list field (or of a Hub column: ``each="row"``) is of ``kinds``; counted from 1."""
    for number, value in enumerate(values, 1):
        if not _is(value, kinds):
            raise ValueError(f"{where}: {what} {each} {number} must be {_kinds_text(kinds)}; "
                             f"got {_shown(value)}")
