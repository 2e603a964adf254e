"""Content fingerprints: of a run's local data files, and of a tokenizer.

A run's id is a hash of its config, and a config names data by path: change the file behind the path
and the config stays the same. The pipeline records these fingerprints in each result and reuses a
completed result only when the data still has the same content (``framework.pipeline.run``). Tokenised
data caches (GLUE, instruction tasks) key on ``tokenizer_fingerprint``: a tokenizer's name says little.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

CHUNK_BYTES = 1 << 20


def fingerprint(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """``{absolute path: sha256}`` of each file, or of each folder (over its files' relative names and
    contents; hidden files skipped). Paths that do not exist are left to the task's own checks."""
    out = {}
    for path in paths:
        resolved = Path(path).expanduser().resolve()
        if resolved.exists():
            out[str(resolved)] = _folder_digest(resolved) if resolved.is_dir() else file_sha256(resolved)
    return out


def same_data(recorded: dict[str, str], current: dict[str, str]) -> bool:
    """Equal contents, wherever the files now lie (a moved copy is the same data)."""
    return sorted(recorded.values()) == sorted(current.values())


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0" + file_sha256(file).encode() + b"\n")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """A file's SHA-256, remembered per (path, size, mtime): a run or a sweep in one process reads each file once."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return _cached_digest(str(resolved), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of everything that decides the token ids (vocab, normalizer, pre/post-processing)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are call-time state the tokenizer writes into its backend: not identity
        parsed = json.loads(backend.to_str())
        parsed.pop("truncation", None)
        parsed.pop("padding", None)
        definition = json.dumps(parsed, sort_keys=True)
    else:
        definition = json.dumps(
            {"class": type(tokenizer).__name__, "vocab": sorted(tokenizer.get_vocab().items()),
             "special": sorted(map(str, tokenizer.all_special_tokens))}
        )
    return hashlib.sha256(definition.encode("utf-8")).hexdigest()
