"""framework/threads.py: the thread count fitted to the CPUs a process may use, and passive OpenMP waiting."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from framework import threads
from framework.threads import cgroup_cpus, fitted_threads, parse_cfs, parse_cpu_max

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("affinity, quota, slurm, local, expected", [
    (8, None, None, None, 8),          # nothing but the affinity mask
    (8, 2.5, None, None, 2),           # a fractional quota rounds down
    (8, 0.5, None, None, 1),           # ... but never below one thread
    (8, None, "3", None, 3),           # SLURM_CPUS_PER_TASK
    (2, None, "16", None, 2),          # the tightest limit wins
    (8, 6.0, None, "2", 3),            # divided among the processes of one node
    (2, None, None, "16", 1),          # at least one thread each
    (8, None, "", "", 8),              # blank env values are no limit
    (8, None, "abc", "0", 8),          # nor are invalid ones
])
def test_fitted_threads(affinity, quota, slurm, local, expected):
    assert fitted_threads(affinity, quota, slurm, local) == expected


def test_parse_cgroup_files():
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("200000\n", "100000\n") == 2.0


def test_cgroup_v2_takes_the_tightest_ancestor(tmp_path):
    (tmp_path / "job" / "step").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "job" / "cpu.max").write_text("300000 100000\n")
    (tmp_path / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpus(tmp_path, "0::/job/step\n") == 3.0
    assert cgroup_cpus(tmp_path, "0::/\n") is None


def test_cgroup_v1_quota(tmp_path):
    folder = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("50000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n") == 0.5
    # a namespaced container sees "/" while its limit sits at the mount's root
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpus(tmp_path, "2:cpu:/\n") == 2.0


def test_configure_respects_the_users_settings(monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: 4)
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    env = {"LOCAL_WORLD_SIZE": "2"}
    decided = threads.configure(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "2"
    assert decided["threads_source"] == "fitted" and decided["omp_wait_policy_source"] == "set"
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}
    decided = threads.configure(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "3"
    assert decided["threads"] == 3 and decided["threads_source"] == "OMP_NUM_THREADS"
    assert decided["fitted_threads"] == 2


def _openmp_environment(code: str, **env) -> tuple[str, str]:
    """Run `code` in a fresh interpreter with libgomp's OMP_DISPLAY_ENV: what OpenMP itself was started with.

    libgomp prints OMP_WAIT_POLICY as 'PASSIVE' even when unset (it then spins 300,000 rounds before sleeping);
    GOMP_SPINCOUNT (shown when VERBOSE) is what really differs: 0 only when passive waiting took effect.
    """
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    environ.update(OMP_DISPLAY_ENV="VERBOSE", **env)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout, done.stderr


MATMUL = "import torch; (torch.ones(64, 64) @ torch.ones(64, 64)).sum(); print('threads', torch.get_num_threads())"


def test_run_py_makes_openmp_wait_passively_with_fitted_threads():
    """Importing run.py (its module level, as `python run.py` runs it) configures OpenMP before torch loads."""
    expected = threads.fitted_threads(len(os.sched_getaffinity(0)), threads.cgroup_cpus(), None, None)
    out, err = _openmp_environment("import run; " + MATMUL)
    assert "GOMP_SPINCOUNT = '0'" in err
    assert f"threads {expected}" in out
    out, err = _openmp_environment("import run; " + MATMUL, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in err and "GOMP_SPINCOUNT = '0'" not in err and "threads 1" in out
    # without it, libgomp's default (spinning for a while before sleeping) is what torch gets
    _, err = _openmp_environment(MATMUL)
    assert "GOMP_SPINCOUNT = '0'" not in err


def test_result_provenance_records_threads():
    import torch

    from framework.results import provenance

    recorded = provenance()["threads"]
    assert recorded["torch_threads"] == torch.get_num_threads()
    assert recorded["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")
