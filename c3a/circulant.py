"""Block-circulant operator of C3A: Δz = C(kernel)·x, computed without a d×d matrix in the FFT path.

Kernel shape (b_out, b_in, p) with p the block size; row convention of the paper: C[r, c] = w[(c - r) mod p],
so block i of the output is Σ_j (circular cross-correlation of x_j with w_ij), i.e. in frequency space
Y_i = Σ_j conj(W_ij) · X_j with real FFTs of length p.

Two exact ways to evaluate `c3a_linear` (chosen by dtype, token count and device, see `choose_path`):
- "merged": float32/float64 model. One matmul with W0 + scale·C(kernel) built on the fly (d_out·d_in work, tiny
  next to N·d_out·d_in). Backward: grad_x = g @ W_eff; kernel grad through FFTs (`kernel_grad`). Saves only x.
- "fft": half-precision model (a bf16 merged weight would round the adapter away) or few tokens. The adapter runs
  in float32 through FFTs and is added in place to the base output. Saves only x (in its own dtype).

Layout trick used by both: a chunk of c tokens is turned into "planes" (F, 2b, c) = [real rows; imaginary rows]
of its blockwise rfft, tokens contiguous. The per-frequency complex contractions (over blocks, or over tokens for
the kernel gradient) then become real batched matmuls over the F = p//2 + 1 frequencies. Tokens are processed
in chunks small enough to stay in cache; that also bounds the transient memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The merged path builds a dense W_eff (d_out·d_in, fresh memory, twice per step); it pays once the tokens
# outnumber MERGE_TOKENS_PER_DIM x the harmonic mean of d_in and d_out (measured crossover on CPU ~1x).
MERGE_TOKENS_PER_DIM = 1.0
MERGE_MIN_TOKENS = 64
# Tokens are processed in chunks: at most MAX_CHUNKS of them (each chunk costs ~5 kernel launches / parallel
# regions, expensive on a GPU or a loaded CPU), none smaller than MIN_CHUNK_ELEMENTS (small inputs run in one go).
# Transient memory is ~3 chunks of spectra, i.e. ~3/MAX_CHUNKS of x: 4 keeps the peak below LoRA r=8's.
MAX_CHUNKS = 4
MIN_CHUNK_ELEMENTS = 1 << 15
PATHS = ("merged", "fft")


def block_circulant_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """Dense (b_out*p, b_in*p) matrix of a kernel (b_out, b_in, p); differentiable (used for merging and tests)."""
    b_out, b_in, p = kernel.shape
    doubled = torch.cat([kernel, kernel], dim=-1)  # (b_out, b_in, 2p)
    # hankel[i, j, r', c] = doubled[i, j, 1 + r' + c] = w[(c - (p-1-r')) mod p]: C's rows in reverse order.
    s_out, s_in, s_t = doubled.stride()
    hankel = doubled.as_strided((b_out, p, b_in, p), (s_out, s_t, s_in, s_t), doubled.storage_offset() + s_t)
    return hankel.flip(1).reshape(b_out * p, b_in * p)


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if anything is float64, else float32 (FFTs never run in half precision)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _chunk_tokens(tokens: int, features: int) -> int:
    return max(-(-tokens // MAX_CHUNKS), MIN_CHUNK_ELEMENTS // max(1, features), 1)


class _Workspace:
    """Per-call buffers reused across chunks: one spectrum (c, b, F) and named "planes" (c, F, 2, b).

    Planes hold [Re; Im] of the blockwise rfft per frequency. Viewed as (F, 2b, c), frequency f is a (2b, c)
    matrix (column-major, leading dim F·2b), so the contractions over blocks or over tokens become real batched
    matmuls over the F frequencies; the copy into planes is a small per-token transpose.
    """

    def __init__(self, chunk: int, p: int, max_blocks: int, dtype: torch.dtype, device):
        self.p, self.num_freqs, self.dtype, self.device = p, p // 2 + 1, dtype, device
        self.size = chunk * max_blocks * self.num_freqs
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.spectrum_flat = torch.empty(self.size, dtype=complex_dtype, device=device)
        self.planes_flat: dict[str, torch.Tensor] = {}

    def _spectrum(self, c: int, blocks: int) -> torch.Tensor:
        return self.spectrum_flat[: c * blocks * self.num_freqs].view(c, blocks, self.num_freqs)

    def to_planes(self, y: torch.Tensor, name: str) -> torch.Tensor:
        """(c, b*p) signal -> (F, 2b, c) view of its blockwise rfft planes, in the buffer `name`."""
        c, blocks = y.shape[0], y.shape[1] // self.p
        spectrum = self._spectrum(c, blocks)
        torch.fft.rfft(y.to(self.dtype).view(c, blocks, self.p), out=spectrum)
        if name not in self.planes_flat:
            self.planes_flat[name] = torch.empty(2 * self.size, dtype=self.dtype, device=self.device)
        planes = self.planes_flat[name][: 2 * spectrum.numel()].view(c, self.num_freqs, 2, blocks)
        planes.copy_(torch.view_as_real(spectrum).permute(0, 2, 3, 1))
        return planes.view(c, self.num_freqs, 2 * blocks).permute(1, 2, 0)

    def from_planes(self, planes: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
        """(F, 2b, c) planes -> their irfft written into (or added to) out (c, b*p)."""
        num_freqs, two_b, c = planes.shape
        spectrum = self._spectrum(c, two_b // 2)
        torch.view_as_real(spectrum).copy_(planes.reshape(num_freqs, 2, two_b // 2, c).permute(3, 2, 0, 1))
        if not accumulate and out.dtype == self.dtype and out.is_contiguous():
            torch.fft.irfft(spectrum, n=self.p, out=out.view(c, -1, self.p))
            return
        signal = torch.fft.irfft(spectrum, n=self.p).view(c, -1)
        if accumulate:
            out.add_(signal)
        else:
            out.copy_(signal)


def _spectral_operator(kernel: torch.Tensor, scale: float, dtype: torch.dtype, transpose: bool) -> torch.Tensor:
    """Real (F, 2*rows, 2*cols) matrix that applies scale·C(kernel) (or its transpose) to planes.

    Forward: Y_i = Σ_j conj(W_ij) X_j  -> [[Wr, Wi], [-Wi, Wr]].
    Transpose (grad wrt x): X_j = Σ_i W_ij G_i -> [[Wr^T, -Wi^T], [Wi^T, Wr^T]].
    """
    spectrum = torch.fft.rfft(kernel.to(dtype) * scale)  # (b_out, b_in, F)
    re = spectrum.real.permute(2, 0, 1)
    im = spectrum.imag.permute(2, 0, 1)
    if transpose:
        re, im = re.transpose(1, 2), im.transpose(1, 2)
        top, bottom = torch.cat([re, -im], dim=2), torch.cat([im, re], dim=2)
    else:
        top, bottom = torch.cat([re, im], dim=2), torch.cat([-im, re], dim=2)
    return torch.cat([top, bottom], dim=1).contiguous()


def _kernel_grad_from_moments(moments: torch.Tensor, b_out: int, b_in: int, p: int) -> torch.Tensor:
    """moments = Σ_tokens G_planes X_planes^T, (F, 2b_out, 2b_in) -> kernel gradient (b_out, b_in, p)."""
    real = moments[:, :b_out, :b_in] + moments[:, b_out:, b_in:]  # Σ Gr Xr + Gi Xi
    imag = moments[:, :b_out, b_in:] - moments[:, b_out:, :b_in]  # Σ Gr Xi - Gi Xr
    cross_spectrum = torch.complex(real, imag).permute(1, 2, 0)  # Σ conj(G) X, (b_out, b_in, F)
    return torch.fft.irfft(cross_spectrum, n=p)


def kernel_grad(x: torch.Tensor, grad_out: torch.Tensor, b_out: int, b_in: int, p: int) -> torch.Tensor:
    """dL/dkernel of Δz = C(kernel)·x given dL/dΔz: per-frequency Σ_tokens conj(rfft g) · rfft x (paper §3.3).

    x (..., b_in*p), grad_out (..., b_out*p); returns (b_out, b_in, p) in float32 (float64 for float64 inputs).
    """
    dtype = _compute_dtype(x.dtype, grad_out.dtype)
    x2 = x.reshape(-1, b_in * p)
    g2 = grad_out.reshape(-1, b_out * p)
    moments = torch.zeros(p // 2 + 1, 2 * b_out, 2 * b_in, dtype=dtype, device=x.device)
    chunk = _chunk_tokens(x2.shape[0], max(b_in, b_out) * p)
    workspace = _Workspace(chunk, p, max(b_in, b_out), dtype, x.device)
    for start in range(0, x2.shape[0], chunk):
        g_planes = workspace.to_planes(g2[start:start + chunk], "g")
        x_planes = workspace.to_planes(x2[start:start + chunk], "x")
        moments.baddbmm_(g_planes, x_planes.transpose(1, 2))
    return _kernel_grad_from_moments(moments, b_out, b_in, p)


class _CirculantAdd(torch.autograd.Function):
    """out = base + scale·C(kernel)·x through FFTs (base updated in place), or a new tensor if base is None."""

    @staticmethod
    def forward(ctx, base, x, kernel, scale, out_dtype):
        b_out, b_in, p = kernel.shape
        dtype = _compute_dtype(x.dtype, kernel.dtype)
        x2 = x.reshape(-1, b_in * p)
        operator = _spectral_operator(kernel, scale, dtype, transpose=False)
        if base is None:
            out = torch.empty(*x.shape[:-1], b_out * p, dtype=out_dtype, device=x.device)
        else:
            out = base
            ctx.mark_dirty(base)
        out2 = out.view(-1, b_out * p)
        chunk = _chunk_tokens(x2.shape[0], max(b_in, b_out) * p)
        workspace = _Workspace(chunk, p, max(b_in, b_out), dtype, x.device)
        for start in range(0, x2.shape[0], chunk):
            y_planes = torch.bmm(operator, workspace.to_planes(x2[start:start + chunk], "x"))
            workspace.from_planes(y_planes, out2[start:start + chunk], accumulate=base is not None)
        ctx.scale = scale
        ctx.has_base = base is not None
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, kernel)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, kernel = ctx.saved_tensors
        b_out, b_in, p = kernel.shape
        need_x, need_kernel = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        dtype = _compute_dtype(grad_out.dtype, kernel.dtype)
        g2 = grad_out.reshape(-1, b_out * p)
        grad_x = grad_kernel = None
        if need_x:
            operator_t = _spectral_operator(kernel, ctx.scale, dtype, transpose=True)
            grad_x = torch.empty(*grad_out.shape[:-1], b_in * p, dtype=ctx.x_dtype, device=grad_out.device)
            gx2 = grad_x.view(-1, b_in * p)
        if need_kernel:
            x2 = x.reshape(-1, b_in * p)
            moments = torch.zeros(p // 2 + 1, 2 * b_out, 2 * b_in, dtype=dtype, device=grad_out.device)
        chunk = _chunk_tokens(g2.shape[0], max(b_in, b_out) * p)
        workspace = _Workspace(chunk, p, max(b_in, b_out), dtype, grad_out.device)
        for start in range(0, g2.shape[0], chunk):
            g_planes = workspace.to_planes(g2[start:start + chunk], "g")
            if need_kernel:
                x_planes = workspace.to_planes(x2[start:start + chunk], "x")
                moments.baddbmm_(g_planes, x_planes.transpose(1, 2))
            if need_x:  # after the kernel part: from_planes reuses the spectrum buffer
                workspace.from_planes(torch.bmm(operator_t, g_planes), gx2[start:start + chunk], accumulate=False)
        if need_kernel:
            grad_kernel = (_kernel_grad_from_moments(moments, b_out, b_in, p) * ctx.scale).to(kernel.dtype)
        grad_base = grad_out if ctx.has_base and ctx.needs_input_grad[0] else None
        return grad_base, grad_x, grad_kernel, None, None


class _MergedLinear(torch.autograd.Function):
    """F.linear(x, W0 + scale·C(kernel), bias): one matmul; W_eff is rebuilt in backward instead of saved."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernel, scale):
        merged = torch.add(weight, block_circulant_matrix(kernel), alpha=scale)
        out = F.linear(x, merged, bias)
        ctx.scale = scale
        need_x_saved = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        ctx.save_for_backward(x if need_x_saved else None, weight, kernel)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, kernel = ctx.saved_tensors
        b_out, b_in, p = kernel.shape
        grad_x = grad_weight = grad_bias = grad_kernel = None
        if ctx.needs_input_grad[0]:
            merged = torch.add(weight, block_circulant_matrix(kernel), alpha=ctx.scale)
            grad_x = grad_out @ merged
        if ctx.needs_input_grad[1]:
            grad_weight = grad_out.reshape(-1, b_out * p).T @ x.reshape(-1, b_in * p)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, b_out * p).sum(0)
        if ctx.needs_input_grad[3]:
            grad_kernel = (kernel_grad(x, grad_out, b_out, b_in, p) * ctx.scale).to(kernel.dtype)
        return grad_x, grad_weight, grad_bias, grad_kernel, None


def _check_shapes(x: torch.Tensor, kernel: torch.Tensor) -> None:
    if kernel.dim() != 3:
        raise ValueError(f"kernel must be (b_out, b_in, block_size), got shape {tuple(kernel.shape)}")
    b_out, b_in, p = kernel.shape
    if x.shape[-1] != b_in * p:
        raise ValueError(f"x has {x.shape[-1]} features but the kernel {tuple(kernel.shape)} expects {b_in * p}")


def block_circulant_matmul(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Δz = C(kernel)·x over the last dim of x (any leading dims), via real FFTs; no d×d matrix is built.

    Output dtype: float64 if x or kernel is float64, else float32 (half-precision x is computed in float32).
    """
    _check_shapes(x, kernel)
    out_dtype = _compute_dtype(x.dtype, kernel.dtype)
    return _CirculantAdd.apply(None, x, kernel, 1.0, out_dtype)


def choose_path(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor) -> str:
    """Fastest exact path: merge only when x, weight and kernel share a full-precision dtype (a half-precision
    merged weight would round the adapter away, and so would autocast) and there are enough tokens to amortise
    building W_eff."""
    same_dtype = x.dtype == weight.dtype == kernel.dtype and x.dtype in (torch.float32, torch.float64)
    autocast = x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)  # meta: shape inference
    tokens = x.numel() // max(1, x.shape[-1])
    d_out, d_in = weight.shape
    enough = tokens >= max(MERGE_MIN_TOKENS, MERGE_TOKENS_PER_DIM * 2 * d_in * d_out / (d_in + d_out))
    return "merged" if same_dtype and not autocast and enough else "fft"


def c3a_linear(x, weight, bias, kernel, scale: float, *, path: str | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) + scale·C(kernel)·x in x's (the base layer's) dtype.

    The adapter math runs in float32 (float64 for float64 inputs). `path` forces "merged" or "fft" (tests,
    benchmarks); by default `choose_path` picks. Gradients flow to x, kernel, and to weight/bias if they ask.
    """
    _check_shapes(x, kernel)
    if kernel.shape[0] * kernel.shape[2] != weight.shape[0]:
        raise ValueError(f"kernel {tuple(kernel.shape)} does not match weight {tuple(weight.shape)}")
    path = path or choose_path(x, weight, kernel)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if path == "merged":
        if not (x.dtype == weight.dtype == kernel.dtype):
            raise ValueError(f"merged path needs one dtype, got x {x.dtype}, weight {weight.dtype}, "
                             f"kernel {kernel.dtype}")
        return _MergedLinear.apply(x, weight, bias, kernel, scale)
    base = F.linear(x, weight, bias)
    return _CirculantAdd.apply(base, x, kernel, scale, base.dtype)
