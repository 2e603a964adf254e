"""The kernel gradient's per-frequency moments on the CPU, read straight from rfft's output.

The kernel gradient needs, for every frequency f, M[i, j, f] = Σ_t G[t, i, f]·conj(X[t, j, f]) over the step's
tokens t, with G and X the blockwise rffts of the output gradient and the input. rfft writes them as
(tokens, blocks, F). As batched matmuls over f, the contraction first needs both rewritten as (F, blocks, tokens)
and X conjugated: three passes over the activations that cost more than the arithmetic (issue 15). The loop
below reads rfft's layout as it is, compiled by numba for the machine it runs on. It pays from blocks of 32 on
(MIN_BLOCK_SIZE); smaller blocks keep the batched matmuls.

Threads: the tokens are split over torch's thread count (each thread sums its own copy of M) through numba's
thread pool, when numba has a thread-safe one (OpenMP or TBB; its fallback "workqueue" pool is neither thread-safe
nor faster here) and the process has not forked since first using it (GNU OpenMP does not survive a fork).
Otherwise, and for few tokens, one thread.
"""
from __future__ import annotations

import os

import numba
import numpy as np
import torch

# below this block size (F = 17 frequencies) the f loop is too short to vectorise, and the batched matmuls win
# (kernel_grad, loop / batched, 2 threads: block 8 2.8-6.8x, 16 1.7-2.2x, 32 0.57-1.07x, 64 0.69-0.80x)
MIN_BLOCK_SIZE = 32
# below this many tokens per thread, starting the threads costs more than they save
MIN_TOKENS_PER_THREAD = 64
THREAD_SAFE_LAYERS = ("omp", "tbb")
_pool = {"pid": None, "usable": True}  # the process that first used numba's pool; whether it may be used


@numba.njit(nogil=True, cache=True)
def _accumulate(g_spectra, x_spectra, moments, begin, end):  # pragma: no cover - compiled; tested via add_moments
    """moments[i, j, f] += Σ_{begin <= t < end} g[t, i, f]·conj(x[t, j, f]). Four tokens per pass over moments:
    one pass per token is bound by moments' loads and stores; four let the f loop run in vector registers."""
    rows, frequencies = g_spectra.shape[1], g_spectra.shape[2]
    cols = x_spectra.shape[1]
    t = begin
    while t + 4 <= end:
        for i in range(rows):
            for j in range(cols):
                for f in range(frequencies):
                    moments[i, j, f] += ((g_spectra[t, i, f] * np.conj(x_spectra[t, j, f])
                                          + g_spectra[t + 1, i, f] * np.conj(x_spectra[t + 1, j, f]))
                                         + (g_spectra[t + 2, i, f] * np.conj(x_spectra[t + 2, j, f])
                                            + g_spectra[t + 3, i, f] * np.conj(x_spectra[t + 3, j, f])))
        t += 4
    for t in range(t, end):
        for i in range(rows):
            for j in range(cols):
                for f in range(frequencies):
                    moments[i, j, f] += g_spectra[t, i, f] * np.conj(x_spectra[t, j, f])


@numba.njit(parallel=True, cache=True)
def _accumulate_in_parts(g_spectra, x_spectra, parts):  # pragma: no cover - compiled; tested via add_moments
    """parts[k] += the moments of the k-th of len(parts) runs of consecutive tokens, one thread each."""
    count, tokens = parts.shape[0], g_spectra.shape[0]
    per_part = ((tokens + count - 1) // count + 3) // 4 * 4
    for k in numba.prange(count):
        _accumulate(g_spectra, x_spectra, parts[k], min(tokens, k * per_part), min(tokens, (k + 1) * per_part))


def thread_count(tokens: int) -> int:
    """Threads for `tokens` tokens: torch's count (what the process was given), capped by numba's pool and by
    MIN_TOKENS_PER_THREAD; one where numba's pool may not be used (see the module docstring)."""
    if not _pool["usable"] or (_pool["pid"] is not None and _pool["pid"] != os.getpid()):
        return 1
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS, tokens // MIN_TOKENS_PER_THREAD))


def applies(block_size: int, *tensors: torch.Tensor) -> bool:
    """Whether `add_moments` can take these tensors and pays at this block size: plain CPU tensors outside a
    torch.compile trace (NumPy sees neither GPU memory, tensor subclasses nor the fake tensors of a trace), blocks
    of at least MIN_BLOCK_SIZE."""
    return block_size >= MIN_BLOCK_SIZE and not torch.compiler.is_compiling() and all(
        type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors)


def add_moments(moments: torch.Tensor, g_spectra: torch.Tensor, x_spectra: torch.Tensor) -> None:
    """moments (b_out, b_in, F) += Σ_tokens g_spectra[t, :, None, :]·conj(x_spectra[t, None, :, :]), in place,
    for spectra (tokens, b_out, F) and (tokens, b_in, F) as rfft writes them: contiguous, one complex dtype."""
    _check(moments, g_spectra, x_spectra)
    g, x, out = g_spectra.numpy(), x_spectra.numpy(), moments.numpy()
    threads = thread_count(g.shape[0])
    if threads == 1:
        _accumulate(g, x, out, 0, g.shape[0])
        return
    parts = np.zeros((threads,) + out.shape, dtype=out.dtype)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        _accumulate_in_parts(g, x, parts)
    finally:
        numba.set_num_threads(before)
    out += parts.sum(axis=0)
    if _pool["pid"] is None:  # first use: numba has now chosen its pool
        _pool["pid"], _pool["usable"] = os.getpid(), numba.threading_layer() in THREAD_SAFE_LAYERS


def _check(moments: torch.Tensor, g_spectra: torch.Tensor, x_spectra: torch.Tensor) -> None:
    tokens, rows, frequencies = g_spectra.shape
    expected = {"x_spectra": (tokens, x_spectra.shape[1], frequencies),
                "moments": (rows, x_spectra.shape[1], frequencies)}
    for name, tensor in (("x_spectra", x_spectra), ("moments", moments)):
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {expected[name]} for g_spectra "
                             f"{tuple(g_spectra.shape)}")
    for name, tensor in (("g_spectra", g_spectra), ("x_spectra", x_spectra), ("moments", moments)):
        if tensor.dtype not in (torch.complex64, torch.complex128) or tensor.dtype != moments.dtype:
            raise ValueError(f"{name} is {tensor.dtype}; all three must be one of complex64, complex128")
        if not tensor.is_contiguous() or tensor.is_conj() or tensor.is_neg():
            raise ValueError(f"{name} must be contiguous with no lazy conjugate or negation (as rfft writes it)")
