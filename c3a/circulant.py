"""Block-circulant operator (REFERENCE VERSION: to be replaced by the optimised one).

Kernel shape (b_out, b_in, p); row convention of the paper: C[r, c] = w[(c - r) mod p].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def block_circulant_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """Dense (b_out*p, b_in*p) matrix of a kernel (b_out, b_in, p)."""
    b_out, b_in, p = kernel.shape
    r = torch.arange(p, device=kernel.device)
    idx = (r[None, :] - r[:, None]) % p
    blocks = kernel[:, :, idx]  # (b_out, b_in, p, p)
    return blocks.permute(0, 2, 1, 3).reshape(b_out * p, b_in * p)


def block_circulant_matmul(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Δz = C(kernel) x over the last dim of x."""
    b_out, b_in, p = kernel.shape
    xb = x.reshape(*x.shape[:-1], b_in, p)
    xf = torch.fft.rfft(xb, dim=-1)
    wf = torch.fft.rfft(kernel, dim=-1).conj()
    yf = torch.einsum("...jf,ijf->...if", xf, wf)
    y = torch.fft.irfft(yf, n=p, dim=-1)
    return y.reshape(*x.shape[:-1], b_out * p)


def c3a_linear(x, weight, bias, kernel, scale: float) -> torch.Tensor:
    """F.linear(x, weight, bias) + scale * C(kernel) x; kernel math in float32, output in x's dtype."""
    base = F.linear(x, weight, bias)
    delta = block_circulant_matmul(x.to(kernel.dtype), kernel) * scale
    return base + delta.to(base.dtype)
