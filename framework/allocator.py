"""Freed CPU memory stays in the process: glibc's malloc neither maps large blocks afresh nor trims the heap.

By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mapping and returns
free heap tops to the OS, so a training step that allocates the same large tensors every step (SmolLM2's
logits alone are ~130 MB) touches fresh pages each time: a page fault per 4 KiB, ~300,000-440,000 in three
steps. Which blocks come back already mapped depends on the process's allocation history, so two identical
loops in one process differed by 11% (run.py's trainer vs the plain loop, issue 15: its log_softmax took 94 ms
against 29 ms on the same tensor). With mmap off and trimming off, faults stop after the first step and both
loops ran faster: a 4-step epoch 8% for the plain loop, 17% for the trainer, then 0.986x (docs/llama.md §4).
The cost: the process keeps its peak heap until it exits, as torch's CUDA caching allocator keeps GPU memory.

`keep_freed_memory()` sets this through mallopt (glibc only) unless the user chose a malloc policy
(MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, or glibc.malloc tunables in
GLIBC_TUNABLES): then glibc's, or the user's, policy stays. It returns what was decided, for the provenance.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def is_glibc() -> bool:
    """mallopt and malloc_trim exist: Linux with glibc (not musl, not macOS)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def glibc() -> ctypes.CDLL:
    """The C library, for mallopt / malloc_trim (callers check `is_glibc()` first)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def user_policy(env) -> str | None:
    """The variable by which the user chose a malloc policy, if any."""
    for name in USER_SETTINGS:
        if env.get(name):
            return name
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    return None


def keep_freed_memory(env=None) -> dict:
    """mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, -1) on glibc, unless the user set a policy."""
    env = os.environ if env is None else env
    chosen = user_policy(env)
    if chosen:
        return {"keep_freed_memory": False, "reason": f"{chosen} is set: the user's malloc policy stays"}
    if not is_glibc():
        return {"keep_freed_memory": False, "reason": f"not glibc ({platform.system()} {platform.libc_ver()[0]})"}
    libc = glibc()
    done = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, -1) == 1
    return {"keep_freed_memory": done, "reason": "mallopt" if done else "mallopt refused"}
