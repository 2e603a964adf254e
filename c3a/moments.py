"""The kernel gradient's per-frequency moments on the CPU, read straight from rfft's output.

The kernel gradient needs, for every frequency f, M[i, j, f] = Σ_t G[t, i, f]·conj(X[t, j, f]) over the step's
tokens t, with G and X the blockwise rffts of the output gradient and the input. rfft writes them as
(tokens, blocks, F). As batched matmuls over f, the contraction first needs both rewritten as (F, blocks, tokens)
and X conjugated: three passes over the activations that cost more than the arithmetic (issue 15). The loop
below reads rfft's layout as it is. It runs on one thread. Split over two with numba's thread pool (a second
OpenMP runtime beside torch's), the model step was no faster under run.py's passive waiting (issue 15).
"""
from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(nogil=True, cache=True)
def _accumulate(g_spectra, x_spectra, moments):  # pragma: no cover - compiled; tested through add_moments
    """moments[i, j, f] += Σ_t g[t, i, f]·conj(x[t, j, f]). Four tokens per pass over moments: one pass per token
    is bound by moments' loads and stores; four lets the compiler keep the f loop in vector registers."""
    tokens, rows, frequencies = g_spectra.shape
    cols = x_spectra.shape[1]
    t = 0
    while t + 4 <= tokens:
        for i in range(rows):
            for j in range(cols):
                for f in range(frequencies):
                    moments[i, j, f] += ((g_spectra[t, i, f] * np.conj(x_spectra[t, j, f])
                                          + g_spectra[t + 1, i, f] * np.conj(x_spectra[t + 1, j, f]))
                                         + (g_spectra[t + 2, i, f] * np.conj(x_spectra[t + 2, j, f])
                                            + g_spectra[t + 3, i, f] * np.conj(x_spectra[t + 3, j, f])))
        t += 4
    for t in range(t, tokens):
        for i in range(rows):
            for j in range(cols):
                for f in range(frequencies):
                    moments[i, j, f] += g_spectra[t, i, f] * np.conj(x_spectra[t, j, f])


def applies(*tensors: torch.Tensor) -> bool:
    """Whether `add_moments` can take these tensors: plain CPU tensors outside a torch.compile trace (NumPy sees
    neither GPU memory, tensor subclasses nor the fake tensors of a trace)."""
    return not torch.compiler.is_compiling() and all(
        type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu" for t in tensors)


def add_moments(moments: torch.Tensor, g_spectra: torch.Tensor, x_spectra: torch.Tensor) -> None:
    """moments (b_out, b_in, F) += Σ_tokens g_spectra[t, :, None, :]·conj(x_spectra[t, None, :, :]), in place,
    for spectra (tokens, b_out, F) and (tokens, b_in, F) as rfft writes them: contiguous, one complex dtype."""
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
    _accumulate(g_spectra.numpy(), x_spectra.numpy(), moments.numpy())
