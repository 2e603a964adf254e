"""Block-circulant operator of C3A: Δz = C(kernel)·x, computed without a d×d matrix in the FFT path.

Kernel shape (b_out, b_in, p) with p the block size; row convention of the paper: C[r, c] = w[(c - r) mod p],
so block i of the output is Σ_j (circular cross-correlation of x_j with w_ij), i.e. in frequency space
Y_i = Σ_j conj(W_ij) · X_j with real FFTs of length p.

Two ways to evaluate `c3a_linear`, exact in full precision (chosen by dtype, token count, device and
autocast, see `choose_path`):
- "merged": float32/float64 weights. One matmul with W0 + scale·C(kernel) built on the fly (`merged_weight`,
  d_out·d_in work); backward: grad_x = g @ W_eff (rebuilt), kernel grad through FFTs (`kernel_grad`); saves x.
  Under autocast it is autocast's own treatment of a float32 weight: the matmuls use W_eff cast once to the
  autocast dtype (kept for backward, as autocast keeps its cast of W0), just as a full fine-tune under autocast
  sees lowp(W0 + ΔW); the kernel gradient stays float32.
- "fft": half-precision weights (a bf16 model: its merged weight would round the adapter away) or few tokens.
  The adapter runs in float32 through FFTs and is added in place to the base output. Saves only x (its dtype).

Layout used by both: a chunk of c tokens becomes its blockwise rfft as a contiguous complex (F, b, c) tensor,
tokens last. The per-frequency contractions (over blocks, or over tokens for the kernel gradient) are then
complex batched matmuls over the F = p//2 + 1 frequencies (the conjugate transpose is a view BLAS reads as
such), and the inverse FFT runs over the frequency dim. On the CPU the merged path's kernel gradient instead
sums its moments straight from rfft's (c, b, F) output for blocks of 32 or more (`c3a.moments`). Tokens are
processed in chunks (few ops for small inputs, bounded transient memory for large ones). Adapted layers that read
one input (q, k, v) transform it once for their kernel gradients (`SharedInput`).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from c3a import moments as cpu_moments

# The merged path builds a dense W_eff (d_out·d_in, fresh memory, twice per step); it pays once the tokens
# outnumber MERGE_TOKENS_PER_DIM x the harmonic mean of d_in and d_out (CPU, SmolLM2's shapes at 512 tokens:
# merged is faster than FFT already at ~0.6x, e.g. q 576x576 and up 576->1536; issue 15).
MERGE_TOKENS_PER_DIM = 0.5
MERGE_MIN_TOKENS = 64
# Tokens are processed in chunks: at most MAX_CHUNKS of them (each chunk costs ~5 kernel launches / parallel
# regions, expensive on a GPU or a loaded CPU), none smaller than MIN_CHUNK_ELEMENTS (small inputs run in one go).
# Transient memory is ~3 chunks of spectra, i.e. ~3/MAX_CHUNKS of x: 4 keeps the peak below LoRA r=8's. (Layers
# that share an input hold all of its spectra, about one x more, from the first of them to the last: SharedInput.)
MAX_CHUNKS = 4
MIN_CHUNK_ELEMENTS = 1 << 19
PATHS = ("merged", "fft")
# merged_weight goes through NumPy from this size on; below it NumPy's fixed cost outweighs the saved pass (paired
# fwd+bwd at 512 tokens, 2 threads, NumPy / torch: k 192x576 1.06, q 576x576 0.99, up and down 576x1536 0.93)
NUMPY_BUILD_ELEMENTS = 1 << 18
# merged_weight splits a W_eff of at least this many elements over torch's threads (2 threads, this CPU: 4096x4096
# 37 -> 29 ms, 11008x4096 96 -> 63 ms; below ~1M elements the threads cost more than they gain)
PARALLEL_BUILD_ELEMENTS = 1 << 22


def block_circulant_matrix(kernel: torch.Tensor) -> torch.Tensor:
    """Dense (b_out*p, b_in*p) matrix of a kernel (b_out, b_in, p); differentiable (used for merging and tests)."""
    b_out, b_in, p = kernel.shape
    doubled = torch.cat([kernel, kernel], dim=-1)  # (b_out, b_in, 2p)
    # hankel[i, j, r', c] = doubled[i, j, 1 + r' + c] = w[(c - (p-1-r')) mod p]: C's rows in reverse order.
    s_out, s_in, s_t = doubled.stride()  # fresh from cat: storage offset 0 (torch.compile traces no storage_offset())
    hankel = doubled.as_strided((b_out, p, b_in, p), (s_out, s_t, s_in, s_t), s_t)
    return hankel.flip(1).reshape(b_out * p, b_in * p)


def merged_weight(weight: torch.Tensor, kernel: torch.Tensor, scale: float) -> torch.Tensor:
    """W0 + scale·C(kernel) as a new tensor, not differentiable (the merged path's W_eff, built twice a step).

    On the CPU in float32/float64 it is one pass over d_out·d_in through NumPy, which (unlike torch) takes the
    negative stride a circulant view needs: C[i, r, j, c] = doubled_ij[p - r + c]. torch's flip + add makes
    and rereads a d_out·d_in temporary: issue 15 measured the pass at ~0.6x the time for SmolLM2's MLP shapes.
    """
    plain = type(weight) in (torch.Tensor, nn.Parameter) and type(kernel) in (torch.Tensor, nn.Parameter)
    if (not plain or torch.compiler.is_compiling() or weight.device.type != "cpu"
            or weight.numel() < NUMPY_BUILD_ELEMENTS
            or weight.dtype not in (torch.float32, torch.float64) or kernel.dtype != weight.dtype):
        # torch: GPUs, half precision, tensor subclasses and traced graphs (NumPy sees none of them), small weights
        return torch.add(weight.detach(), block_circulant_matrix(kernel.detach()), alpha=scale)
    b_out, b_in, p = kernel.shape
    small = kernel.detach().resolve_neg().numpy()
    doubled = np.concatenate([small, small], axis=-1) * small.dtype.type(scale)  # (b_out, b_in, 2p)
    s_out, s_in, s_t = doubled.strides
    circulant = np.lib.stride_tricks.as_strided(doubled[:, :, p:], shape=(b_out, p, b_in, p),
                                                strides=(s_out, -s_t, s_in, s_t), writeable=False)
    out = torch.empty(weight.shape, dtype=weight.dtype)
    base = weight.detach().resolve_neg().numpy().reshape(b_out, p, b_in, p)
    target = out.numpy().reshape(b_out, p, b_in, p)
    workers = min(b_out, torch.get_num_threads()) if weight.numel() >= PARALLEL_BUILD_ELEMENTS else 1
    _add_by_block_rows(base, circulant, target, workers)
    return out


def _add_by_block_rows(base: np.ndarray, circulant: np.ndarray, target: np.ndarray, workers: int) -> None:
    """target = base + circulant, the block rows split over ``workers`` threads (NumPy runs one thread, and
    releases the GIL in np.add); a worker's error is raised here, not lost in its thread."""
    bounds = np.linspace(0, base.shape[0], workers + 1).astype(int)
    jobs = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    errors = []

    def add(rows: slice) -> None:
        try:
            np.add(base[rows], circulant[rows], out=target[rows])
        except BaseException as error:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=add, args=(rows,)) for rows in jobs[1:]]
    for thread in threads:
        thread.start()
    add(jobs[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class SharedInput:
    """One input as read by the adapted layers of one forward pass (q, k and v read the same hidden states).

    Each reader's kernel gradient needs the input's spectra; the first reader's backward computes them and
    keeps them here for the others, and the last one drops them, so the transform runs once instead of once per
    layer. A lone reader keeps nothing. The first backward use closes the group: the next forward pass on the same
    tensor starts a new one. (Spectra kept past a partial backward pass stay right: autograd refuses an input
    changed in place, and the group dies with the graph.)"""

    def __init__(self) -> None:
        self.readers = 0
        self.used = 0
        self.closed = False
        self.spectra: dict = {}

    def get(self, start: int, rows: torch.Tensor, blocks: int, p: int, dtype: torch.dtype, layout: str
            ) -> torch.Tensor:
        """The spectra (`_x_spectra`) of the input's tokens ``start:start + len(rows)`` in ``layout``, computed once
        (readers may chunk the tokens differently: a chunk is known by where it starts and ends)."""
        self.closed = True
        if self.readers < 2:
            return _x_spectra(rows, blocks, p, dtype, layout)
        key = (start, rows.shape[0], dtype, layout)
        if key not in self.spectra:
            self.spectra[key] = _x_spectra(rows, blocks, p, dtype, layout)
        return self.spectra[key]

    def done(self) -> None:
        """One reader's kernel gradient is computed; after the last one of a backward pass the spectra go."""
        self.used += 1
        if self.used >= self.readers:
            self.used, self.spectra = 0, {}


_READERS: dict = {}  # id(x) -> (weakref to x, {(version, blocks, p): SharedInput}); an entry goes with its x
_READERS_LOCK = threading.RLock()  # re-entrant: a weakref callback (_forget) may fire inside, on GC


def shared_input(x: torch.Tensor, blocks: int, p: int) -> SharedInput | None:
    """Register one more adapted layer reading ``x`` in this forward pass (None when no graph is recorded or
    torch.compile traces: nothing is shared then)."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return None
    with _READERS_LOCK:
        entry = _READERS.get(id(x))
        if entry is None or entry[0]() is not x:
            key = id(x)
            entry = (weakref.ref(x, lambda _, key=key: _forget(key)), {})
            _READERS[key] = entry
        groups = entry[1]
        group = groups.get((x._version, blocks, p))
        if group is None or group.closed:
            group = groups[(x._version, blocks, p)] = SharedInput()
        group.readers += 1
        return group


def _input_spectra(shared: SharedInput | None, start: int, rows: torch.Tensor, blocks: int, p: int,
                   dtype: torch.dtype, layout: str) -> torch.Tensor:
    """The kernel gradient's spectra of the input rows ``start:start + len(rows)``: its group's, if any."""
    if shared is None:
        return _x_spectra(rows, blocks, p, dtype, layout)
    return shared.get(start, rows, blocks, p, dtype, layout)


def _forget(key: int) -> None:
    with _READERS_LOCK:
        entry = _READERS.get(key)
        if entry is not None and entry[0]() is None:
            del _READERS[key]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if anything is float64, else float32 (FFTs never run in half precision)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _chunk_tokens(tokens: int, features: int) -> int:
    return max(-(-tokens // MAX_CHUNKS), MIN_CHUNK_ELEMENTS // max(1, features), 1)


def _block_rfft(rows: torch.Tensor, blocks: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    """(c, blocks*p) signal -> its blockwise rfft, (c, blocks, F) complex, laid out as rfft writes it."""
    return torch.fft.rfft(rows.to(dtype).view(rows.shape[0], blocks, p), dim=2)


def _spectra(rows: torch.Tensor, blocks: int, p: int, dtype: torch.dtype, conjugate: bool = False) -> torch.Tensor:
    """(c, blocks*p) signal -> its blockwise rfft as contiguous (F, blocks, c) complex (``conjugate``: its
    complex conjugate, written out). Frequency f is then a (blocks, c) matrix, so the contractions over blocks
    (operator) or over tokens (kernel gradient) are batched matmuls on contiguous operands (one transposing copy
    here; strided operands would make bmm copy each of the F matrices)."""
    spectra = _block_rfft(rows, blocks, p, dtype).permute(2, 1, 0)
    if not conjugate:
        return spectra.contiguous()
    # written out, not a lazy conj view: bmm copies a conjugated operand (issue 15's profile: 1 ms per call)
    return torch.conj_physical(spectra, out=torch.empty(spectra.shape, dtype=spectra.dtype, device=spectra.device))


def _token_spectra(rows: torch.Tensor, blocks: int, p: int, dtype: torch.dtype) -> torch.Tensor:
    """(c, blocks*p) signal -> its blockwise rfft, contiguous (c, blocks, F) complex: as rfft writes it for
    contiguous rows (a strided input, e.g. a transposed gradient, gets a strided output, copied here)."""
    return _block_rfft(rows, blocks, p, dtype).contiguous()


def _x_spectra(rows: torch.Tensor, blocks: int, p: int, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """The kernel gradient's transform of input rows: "tokens" as rfft writes it (for `cpu_moments`), or
    "conj_frequencies", conjugated in the (F, blocks, c) layout of the batched matmuls."""
    if layout == "tokens":
        return _token_spectra(rows, blocks, p, dtype)
    return _spectra(rows, blocks, p, dtype, conjugate=True)


def _apply_spectral(operator: torch.Tensor, spectra: torch.Tensor, p: int) -> torch.Tensor:
    """(F, rows, cols) operator applied to (F, cols, c) spectra -> the signal as (p, rows, c), real."""
    return torch.fft.irfft(torch.bmm(operator, spectra), n=p, dim=0)


def _write_rows(signal: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """(p, blocks, c) signal into out (c, blocks*p), added or copied (a transposing copy, any dtype)."""
    target = out.view(out.shape[0], signal.shape[1], signal.shape[0])
    if accumulate:
        target.add_(signal.permute(2, 1, 0))
    else:
        target.copy_(signal.permute(2, 1, 0))


def _spectral_operator(kernel: torch.Tensor, scale: float, dtype: torch.dtype, transpose: bool) -> torch.Tensor:
    """Complex (F, rows, cols) matrices that apply scale·C(kernel) (or its transpose) to spectra.

    Forward: Y_i = Σ_j conj(W_ij) X_j. Transpose (grad wrt x): X_j = Σ_i W_ij G_i.
    """
    spectrum = torch.fft.rfft(kernel.to(dtype) * scale)  # (b_out, b_in, F)
    if transpose:
        return spectrum.permute(2, 1, 0).contiguous()
    return spectrum.conj().permute(2, 0, 1).resolve_conj().contiguous()


def _add_moments(moments: torch.Tensor | None, g_spectra: torch.Tensor, x_conj_spectra: torch.Tensor) -> torch.Tensor:
    """moments (F, b_out, b_in) += Σ_tokens G conj(X)^T for one chunk of (F, blocks, c) spectra, given conj(X)
    written out (its transpose is a view BLAS reads as such: no copy)."""
    chunk = torch.bmm(g_spectra, x_conj_spectra.mT)
    return chunk if moments is None else moments.add_(chunk)


def _kernel_grad_from_moments(moments: torch.Tensor, p: int, layout: str) -> torch.Tensor:
    """Σ G conj(X) per frequency -> kernel gradient irfft(Σ conj(G) X), (b_out, b_in, p). ``layout``: the moments'
    as their path sums them, "tokens" (b_out, b_in, F) or "conj_frequencies" (F, b_out, b_in)."""
    if layout == "conj_frequencies":
        moments = moments.permute(1, 2, 0)
    return torch.fft.irfft(moments.conj(), n=p)


def kernel_grad(x: torch.Tensor, grad_out: torch.Tensor, b_out: int, b_in: int, p: int,
                shared: SharedInput | None = None) -> torch.Tensor:
    """dL/dkernel of Δz = C(kernel)·x given dL/dΔz: per-frequency Σ_tokens conj(rfft g) · rfft x (paper §3.3).

    x (..., b_in*p), grad_out (..., b_out*p); returns (b_out, b_in, p) in float32 (float64 for float64 inputs).
    ``shared``: x's group of readers (`shared_input`), whose spectra of x are reused.
    """
    dtype = _compute_dtype(x.dtype, grad_out.dtype)
    x2 = x.reshape(-1, b_in * p)
    g2 = grad_out.reshape(-1, b_out * p)
    chunk = _chunk_tokens(x2.shape[0], max(b_in, b_out) * p)
    chunks = range(0, x2.shape[0], chunk)
    if cpu_moments.applies(p, x2, g2):  # the moments straight from rfft's layout: no transposing copies
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        moments = torch.zeros(b_out, b_in, p // 2 + 1, dtype=complex_dtype)
        for start in chunks:
            cpu_moments.add_moments(moments, _token_spectra(g2[start:start + chunk], b_out, p, dtype),
                                    _input_spectra(shared, start, x2[start:start + chunk], b_in, p, dtype, "tokens"))
        grad = _kernel_grad_from_moments(moments, p, "tokens")
    else:
        moments = None
        for start in chunks:
            moments = _add_moments(moments, _spectra(g2[start:start + chunk], b_out, p, dtype),
                                   _input_spectra(shared, start, x2[start:start + chunk], b_in, p, dtype,
                                                  "conj_frequencies"))
        grad = (torch.zeros(b_out, b_in, p, dtype=dtype, device=x.device) if moments is None  # no tokens
                else _kernel_grad_from_moments(moments, p, "conj_frequencies"))
    if shared is not None:
        shared.done()
    return grad


class _CirculantAdd(torch.autograd.Function):
    """out = base + scale·C(kernel)·x through FFTs (base updated in place), or a new tensor if base is None."""

    @staticmethod
    def forward(ctx, base, x, kernel, scale, out_dtype, shared):
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
        for start in range(0, x2.shape[0], chunk):
            signal = _apply_spectral(operator, _spectra(x2[start:start + chunk], b_in, p, dtype), p)
            _write_rows(signal, out2[start:start + chunk], accumulate=base is not None)
        ctx.scale = scale
        ctx.shared = shared
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
        grad_x = grad_kernel = moments = None
        if need_x:
            operator_t = _spectral_operator(kernel, ctx.scale, dtype, transpose=True)
            grad_x = torch.empty(*grad_out.shape[:-1], b_in * p, dtype=ctx.x_dtype, device=grad_out.device)
            gx2 = grad_x.view(-1, b_in * p)
        if need_kernel:
            x2 = x.reshape(-1, b_in * p)
        chunk = _chunk_tokens(g2.shape[0], max(b_in, b_out) * p)
        for start in range(0, g2.shape[0], chunk):
            g_spectra = _spectra(g2[start:start + chunk], b_out, p, dtype)
            if need_kernel:
                moments = _add_moments(moments, g_spectra, _input_spectra(
                    ctx.shared, start, x2[start:start + chunk], b_in, p, dtype, "conj_frequencies"))
            if need_x:
                _write_rows(_apply_spectral(operator_t, g_spectra, p), gx2[start:start + chunk], accumulate=False)
        if need_kernel:
            if ctx.shared is not None:
                ctx.shared.done()
            grad_kernel = (kernel_grad(x, grad_out, b_out, b_in, p) if moments is None  # no tokens: zeros
                           else _kernel_grad_from_moments(moments, p, "conj_frequencies"))
            grad_kernel = (grad_kernel * ctx.scale).to(kernel.dtype)
        grad_base = grad_out if ctx.has_base and ctx.needs_input_grad[0] else None
        return grad_base, grad_x, grad_kernel, None, None, None


class _MergedLinear(torch.autograd.Function):
    """F.linear(x, W0 + scale·C(kernel), bias): one matmul. In full precision W_eff is rebuilt in backward instead
    of saved; under autocast (``lowp``: its dtype) the cast W_eff is kept, as autocast keeps its cast of W0."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernel, scale, shared, lowp):
        merged = merged_weight(weight, kernel, scale)
        if lowp is not None:
            merged = merged.to(lowp)
            with torch.autocast(x.device.type, enabled=False):
                out = F.linear(x.to(lowp), merged, None if bias is None else bias.to(lowp))
        else:
            out = F.linear(x, merged, bias)
        ctx.scale, ctx.shared, ctx.x_dtype = scale, shared, x.dtype
        need_x_saved = ctx.needs_input_grad[1] or ctx.needs_input_grad[3]
        ctx.save_for_backward(x if need_x_saved else None, weight, kernel, merged if lowp is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, kernel, kept = ctx.saved_tensors
        b_out, b_in, p = kernel.shape
        grad_x = grad_weight = grad_bias = grad_kernel = None
        matmul_grad = grad_out if kept is None else grad_out.to(kept.dtype)
        if ctx.needs_input_grad[0]:
            merged = kept if kept is not None else merged_weight(weight, kernel, ctx.scale)
            grad_x = (matmul_grad @ merged).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_weight = (matmul_grad.reshape(-1, b_out * p).T @ x.reshape(-1, b_in * p).to(matmul_grad.dtype)
                           ).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, b_out * p).sum(0)
        if ctx.needs_input_grad[3]:
            grad_kernel = (kernel_grad(x, grad_out, b_out, b_in, p, ctx.shared) * ctx.scale).to(kernel.dtype)
        return grad_x, grad_weight, grad_bias, grad_kernel, None, None, None


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
    return _CirculantAdd.apply(None, x, kernel, 1.0, out_dtype, None)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    return torch.get_autocast_dtype(device) if device != "meta" and torch.is_autocast_enabled(device) else None


def _can_merge(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor) -> bool:
    """Merging keeps the numerics: x, weight and kernel in one full-precision dtype, or float32 weight and kernel
    under autocast (x float32 or the autocast dtype): never a half-precision weight, whose merged weight would
    round the adapter away."""
    lowp = _autocast_dtype(x)
    if lowp is not None:
        return weight.dtype == kernel.dtype == torch.float32 and x.dtype in (torch.float32, lowp)
    return x.dtype == weight.dtype == kernel.dtype and x.dtype in (torch.float32, torch.float64)


def choose_path(x: torch.Tensor, weight: torch.Tensor, kernel: torch.Tensor) -> str:
    """Fastest path: merged where `_can_merge` and there are enough tokens to amortise building W_eff."""
    tokens = x.numel() // max(1, x.shape[-1])
    d_out, d_in = weight.shape
    enough = tokens >= max(MERGE_MIN_TOKENS, MERGE_TOKENS_PER_DIM * 2 * d_in * d_out / (d_in + d_out))
    return "merged" if enough and _can_merge(x, weight, kernel) else "fft"


def c3a_linear(x, weight, bias, kernel, scale: float, *, path: str | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) + scale·C(kernel)·x in x's (the base layer's) dtype.

    The adapter math runs in float32 (float64 for float64 inputs); under autocast the merged path's two matmuls
    run in the autocast dtype, as any weight's do. `path` forces "merged" or "fft" (tests, benchmarks); by
    default `choose_path` picks. Gradients flow to x, kernel, and to weight/bias if they ask.
    """
    _check_shapes(x, kernel)
    if kernel.shape[0] * kernel.shape[2] != weight.shape[0]:
        raise ValueError(f"kernel {tuple(kernel.shape)} does not match weight {tuple(weight.shape)}")
    path = path or choose_path(x, weight, kernel)
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    shared = shared_input(x, kernel.shape[1], kernel.shape[2]) if kernel.requires_grad else None
    if path == "merged":
        if not _can_merge(x, weight, kernel):
            raise ValueError(f"merged path needs one full-precision dtype (or float32 weights under autocast), got "
                             f"x {x.dtype}, weight {weight.dtype}, kernel {kernel.dtype}")
        return _MergedLinear.apply(x, weight, bias, kernel, scale, shared, _autocast_dtype(x))
    base = F.linear(x, weight, bias)
    return _CirculantAdd.apply(base, x, kernel, scale, base.dtype, shared)
