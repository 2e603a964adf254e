"""One JSON file per run: the schema, the path derived from the config, atomic writes, one run at a time.

The path is a function of the resolved config and the seed (never a timestamp), so rerunning a
sweep finds the runs already done and only does the missing ones. Tables read nothing else. A run
holds a lock next to its result file while it runs (``run_lock``), so two processes never run the
same config and seed at once (two sweeps launched over each other).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from framework import threads
from framework.io import atomic_write_text

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2

#: config keys that do not change what a run computes, left out of the run's identity
NON_IDENTITY_KEYS = ("seed", "paths", "tracker", "force", "wait_for_lock", "hydra", "print_config", "expected_seeds",
                     "task.cache_dir",
                     "trainer.progress_bar", "trainer.num_workers", "trainer.checkpoint_every_epoch",
                     "trainer.save_best", "trainer.test_every_epoch")


@dataclass
class RunResult:
    """Everything one run produced. ``status`` is "completed" or "failed" (failed runs never enter tables)."""

    run_id: str
    status: str
    model: str
    method: str
    task: str
    seed: int
    config: dict[str, Any]
    method_label: str = ""
    task_details: dict[str, Any] = field(default_factory=dict)  # the task's describe(): data, split protocol, sizes
    selection_metric: str = ""
    epochs: list[dict[str, Any]] = field(default_factory=list)  # {epoch, train_loss, lr, val{}, test{}, train_samples, train_time_s}
    best_epoch: int | None = None
    best_val: dict[str, float] = field(default_factory=dict)
    test_at_best: dict[str, float] = field(default_factory=dict)
    test_last: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)  # trainable_excl_head, head, trainable_total, total
    memory: dict[str, Any] = field(default_factory=dict)  # kind ("cuda" | "cpu_peak_rss"), peak_bytes, ...
    timing: dict[str, float] = field(default_factory=dict)  # wall_s, train_time_s, loop_wall_s, train_samples_per_s
    distributed: dict[str, Any] = field(default_factory=dict)  # processes, per-device batch, accumulation, steps
    artifacts: dict[str, str] = field(default_factory=dict)  # end-of-run outputs by name (e.g. sample grids)
    provenance: dict[str, Any] = field(default_factory=dict)  # git commit, versions, device
    error: str | None = None
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str)

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        data = dict(data)
        if "split" in data:  # schema 1 files called the task description "split"
            data.setdefault("task_details", data.pop("split"))
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _drop(config: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if head not in config:
        return
    if rest:
        if isinstance(config[head], dict):
            _drop(config[head], rest)
    else:
        del config[head]


def config_hash(config: dict) -> str:
    """A short stable hash of what the run computes (the resolved config minus non-identity keys)."""
    ident = json.loads(json.dumps(config, default=str))
    for key in NON_IDENTITY_KEYS:
        _drop(ident, key)
    blob = json.dumps(ident, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def run_id(config: dict, model: str, method: str, task: str, seed: int) -> str:
    """``task/model/method/<config-hash>/seed<N>``: readable, and unique per config and seed."""
    return f"{task}/{model}/{method}/{config_hash(config)}/seed{seed}"


def result_path(results_dir: str | os.PathLike, rid: str) -> Path:
    return Path(results_dir) / "runs" / f"{rid}.json"


class RunInProgressError(RuntimeError):
    """Another process holds this run's lock: it is running the same config and seed right now."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the run whose result is ``path`` (next to it; never deleted, see ``run_lock``)."""
    return Path(path).with_suffix(".lock")


@contextlib.contextmanager
def run_lock(path: str | os.PathLike, rid: str, wait: bool = False):
    """Hold the run's lock for the ``with`` block: an exclusive ``flock`` on ``lock_path(path)``, with the holder's
    pid written in the file. The OS releases it when the process dies (kill -9 included), so a stale lock
    never blocks a rerun. Held: ``RunInProgressError`` naming the run and the holder's pid, or with
    ``wait`` block until the holder finishes. The file stays: deleting it would let a waiting process and
    a newcomer lock two different files for the same run."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(lock)
            if not wait:
                raise RunInProgressError(f"run {rid} is already running in process {holder} (lock {lock}); "
                                         f"wait_for_lock=true waits for it to finish") from None
            log.info("waiting for run %s: process %s holds %s", rid, holder, lock)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _holder(lock: Path) -> str:
    """The pid written by the lock's holder (it writes it just after locking: give it a moment)."""
    for _ in range(20):
        text = lock.read_text().strip()
        if text:
            return text
        time.sleep(0.05)
    return "(pid not yet written)"


def write_result(path: str | os.PathLike, result: RunResult) -> None:
    atomic_write_text(path, result.to_json())


def load_result(path: str | os.PathLike) -> RunResult:
    return RunResult.from_dict(json.loads(Path(path).read_text()))


def completed(path: str | os.PathLike) -> bool:
    """True when a completed result exists at ``path`` (a failed one is retried on rerun)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "completed"
    except (json.JSONDecodeError, OSError):
        return False


def iter_results(results_dir: str | os.PathLike):
    """Every run JSON under ``results_dir/runs`` (completed and failed), sorted by path."""
    for path in sorted((Path(results_dir) / "runs").rglob("*.json")):
        try:
            yield path, load_result(path)
        except (json.JSONDecodeError, TypeError):
            continue


PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "hydra-core", "c3a-peft")


def provenance() -> dict[str, Any]:
    """Git commit (and whether the tree was dirty), package versions and the machine."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads.record(),  # torch's thread count and OMP_WAIT_POLICY (framework/threads.py)
    }
