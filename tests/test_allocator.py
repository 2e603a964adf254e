"""Freed CPU memory stays in the process (framework.allocator): large tensors made again step after step cost no
page faults, and a malloc policy the user set is left alone."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from framework.allocator import is_glibc, keep_freed_memory, user_policy

# a training step's pattern: large tensors (40, 130 and 64 MiB) made, used and freed, step after step; the page
# faults of the fourth step
CODE = """
import resource
from framework import threads
decided = threads.configure()
import torch
def step():
    tensors = [torch.ones(mib << 18) for mib in (40, 130, 64)]
    return sum(float(t.sum()) for t in tensors)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
step()
print("faults", resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, decided["allocator"])
"""


def test_user_policy_is_found_in_any_of_its_forms():
    assert user_policy({}) is None
    assert user_policy({"MALLOC_MMAP_MAX_": "65536"}) == "MALLOC_MMAP_MAX_"
    assert user_policy({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_policy({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1024"}) == "GLIBC_TUNABLES"
    assert user_policy({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}) is None
    assert keep_freed_memory({"MALLOC_MMAP_MAX_": "65536"})["keep_freed_memory"] is False


def _fourth_step_faults(**env) -> int:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=dict(environ, **env), capture_output=True,
                          text=True, timeout=120, check=True)
    return int(done.stdout.split()[1])


@pytest.mark.skipif(not is_glibc(), reason="glibc's mallopt")
def test_a_training_steps_large_tensors_cost_no_page_faults_once_warm():
    kept = _fourth_step_faults()
    glibc_default = _fourth_step_faults(MALLOC_MMAP_MAX_="65536")  # a user's policy: glibc's own default
    assert kept < 1000, kept  # the step touches 234 MiB: 59,904 pages of 4 KiB
    assert glibc_default > 30000, glibc_default
