"""Threads that fit the machine: how many CPUs this process may really use, and passive OpenMP waiting.

torch starts one thread per core of the node, not per core the job was given, and its OpenMP threads spin
while they wait. On a shared node (a cluster job, a container with a CPU quota, two runs on one laptop) that
oversubscribes the cores: two processes x two spinning threads on two cores made every step of a plain loop
9x slower (issue 15). `configure()` runs before torch is imported (run.py, scripts/demo.py) and sets
- OMP_WAIT_POLICY=PASSIVE unless already set: idle threads sleep instead of burning the core a sibling
  needs. libgomp reads it once, when it is loaded, so it must be set before `import torch`.
- OMP_NUM_THREADS to `fitted_threads(...)` unless already set (a user's or a launcher's value wins): the
  smallest of the CPU affinity mask, the cgroup CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us/cfs_period_us)
  and SLURM_CPUS_PER_TASK, divided among the processes of one node (LOCAL_WORLD_SIZE, set by torchrun and
  accelerate). Note that torchrun and `accelerate launch` set OMP_NUM_THREADS themselves when they start
  several processes; their value then wins.
It also keeps freed CPU memory in the process (`framework.allocator`), unless the user set a malloc policy.
`record()` is what the result's provenance stores.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from framework.allocator import keep_freed_memory

CGROUP_ROOT = Path("/sys/fs/cgroup")
_state: dict = {}


def fitted_threads(affinity: int | None, cgroup_cpus: float | None, slurm_cpus: str | None,
                   local_world_size: str | None) -> int:
    """Threads per process: min(affinity, quota, SLURM_CPUS_PER_TASK) // processes on this node, at least 1.

    A fractional quota (1.5 CPUs) rounds down; None means "no limit from this source". The env values are
    the raw strings (ignored when empty or not a positive integer, as launchers may leave them blank).
    """
    limits = [affinity] if affinity else []
    if cgroup_cpus is not None and cgroup_cpus > 0:
        limits.append(max(1, math.floor(cgroup_cpus)))
    slurm = _positive_int(slurm_cpus)
    if slurm:
        limits.append(slurm)
    cpus = min(limits) if limits else (os.cpu_count() or 1)
    return max(1, cpus // (_positive_int(local_world_size) or 1))


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(str(text).strip())
    except ValueError:
        return None
    return value if value > 0 else None


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("max 100000" or "<quota> <period>") -> CPUs, None when unlimited."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = int(fields[1]) if len(fields) > 1 else 100_000
    return int(fields[0]) / period


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us -> CPUs, None when the quota is -1 (unlimited)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors (v2, then v1), None if none.

    Inside a container the path in /proc/self/cgroup may not exist under the mount (namespaced): the mount's
    own files then describe the container's limit, and they are read too.
    """
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    limits = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            for folder in _ancestors(root, path):
                limits.append(_read(folder / "cpu.max", parse_cpu_max))
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu", root / "cpu,cpuacct"):
                for folder in _ancestors(mount, path):
                    limits.append(_read_cfs(folder))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _ancestors(mount: Path, path: str) -> list[Path]:
    parts = [part for part in path.strip("/").split("/") if part]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(file: Path, parse):
    try:
        return parse(file.read_text())
    except (OSError, ValueError, IndexError):
        return None


def _read_cfs(folder: Path) -> float | None:
    try:
        return parse_cfs((folder / "cpu.cfs_quota_us").read_text(), (folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None


def _affinity() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def configure(environ=None) -> dict:
    """Set OMP_WAIT_POLICY and OMP_NUM_THREADS (where unset) before torch loads; returns what was decided.

    If torch is already imported (a caller that imported it first), its thread count is set directly too;
    the wait policy then only reaches OpenMP if libgomp was not loaded yet.
    """
    env = os.environ if environ is None else environ
    user_threads = _positive_int(env.get("OMP_NUM_THREADS"))
    limits = {"affinity": _affinity(), "cgroup_cpus": cgroup_cpus(),
              "slurm_cpus_per_task": env.get("SLURM_CPUS_PER_TASK"), "local_world_size": env.get("LOCAL_WORLD_SIZE")}
    fitted = fitted_threads(limits["affinity"], limits["cgroup_cpus"], limits["slurm_cpus_per_task"],
                            limits["local_world_size"])
    threads = user_threads or fitted
    # malloc is the process's own: a dict given for inspection (tests) leaves it alone
    allocator = (keep_freed_memory(env) if environ is None
                 else {"keep_freed_memory": None, "reason": "not this process"})
    wait_source = "environment" if env.get("OMP_WAIT_POLICY") else "set"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["OMP_NUM_THREADS"] = str(threads)
    decided = {"threads": threads, "threads_source": "OMP_NUM_THREADS" if user_threads else "fitted",
               "fitted_threads": fitted, "limits": limits, "omp_wait_policy": env["OMP_WAIT_POLICY"],
               "omp_wait_policy_source": wait_source, "torch_loaded_before": "torch" in sys.modules,
               "allocator": allocator}
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    if environ is None:
        _state.clear()
        _state.update(decided)
    return decided


def record() -> dict:
    """For the result's provenance: torch's actual thread count, the wait policy, and how they were chosen."""
    import torch

    return {**_state, "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "configured": bool(_state)}
