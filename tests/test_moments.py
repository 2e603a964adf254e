"""The CPU moments of the kernel gradient (c3a/moments.py), against einsum and the batched-matmul path."""
import os
import signal
import time

import numba
import pytest
import torch

from c3a import circulant, moments
from c3a.circulant import c3a_linear, kernel_grad


def _spectra(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=gen, dtype=dtype), torch.randn(shape, generator=gen, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tokens", [0, 1, 3, 4, 7, 9, 64, 130, 259])  # four a pass, what is left, threads
def test_add_moments_is_the_sum_over_tokens(tokens, dtype):
    g = _spectra((tokens, 3, 5), dtype, 0)
    x = _spectra((tokens, 2, 5), dtype, 1)
    start = _spectra((3, 2, 5), dtype, 2)
    got = start.clone()
    moments.add_moments(got, g, x)
    want = start.to(torch.complex128) + torch.einsum("tif,tjf->ijf", g.to(torch.complex128),
                                                     x.to(torch.complex128).conj())
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.to(torch.complex128), want, rtol=rtol, atol=rtol * (1 + tokens))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba's pool has one thread on this machine")
def test_threads_split_the_tokens_and_sum_as_one_thread(monkeypatch):
    """Split over threads (uneven runs of tokens, not multiples of the four-token pass) the sum is one thread's
    to float rounding; the pool's layer is then known, and a thread-safe one is kept."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g, x = _spectra((203, 3, 5), torch.float64, 0), _spectra((203, 2, 5), torch.float64, 1)
    assert moments.thread_count(203) == 2 and moments.thread_count(127) == 1
    threaded, serial = torch.zeros(3, 2, 5, dtype=torch.complex128), torch.zeros(3, 2, 5, dtype=torch.complex128)
    moments.add_moments(threaded, g, x)
    moments._accumulate(g.numpy(), x.numpy(), serial.numpy(), 0, 203)
    torch.testing.assert_close(threaded, serial, rtol=1e-13, atol=1e-12)
    assert moments._pool["usable"] == (numba.threading_layer() in moments.THREAD_SAFE_LAYERS)


@pytest.mark.skipif(not hasattr(os, "fork") or numba.config.NUMBA_NUM_THREADS < 2,
                    reason="needs fork and a numba pool of two threads")
def test_a_forked_child_sums_on_one_thread_and_does_not_hang(monkeypatch):
    """After the parent used numba's pool, a forked child (GNU OpenMP's pool does not survive a fork) still sums
    the moments: on one thread, to the parent's result."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    g, x = _spectra((256, 3, 5), torch.float64, 0), _spectra((256, 2, 5), torch.float64, 1)
    parent = torch.zeros(3, 2, 5, dtype=torch.complex128)
    moments.add_moments(parent, g, x)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            child = torch.zeros(3, 2, 5, dtype=torch.complex128)
            moments.add_moments(child, g, x)
            ok = moments.thread_count(256) == 1 and torch.allclose(child, parent, rtol=1e-13, atol=1e-12)
            os.write(write_end, b"ok" if ok else b"wrong")
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung summing the moments")
        time.sleep(0.05)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"ok"


def test_one_thread_after_a_fork_or_without_a_thread_safe_pool(monkeypatch):
    """GNU OpenMP's pool does not survive a fork, and numba's workqueue pool is not thread-safe: one thread then."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)
    monkeypatch.setattr(moments, "_pool", {"pid": os.getpid(), "usable": True})
    assert moments.thread_count(1000) == 2
    monkeypatch.setattr(moments, "_pool", {"pid": os.getpid() + 1, "usable": True})  # a forked child's view
    assert moments.thread_count(1000) == 1
    monkeypatch.setattr(moments, "_pool", {"pid": os.getpid(), "usable": False})
    assert moments.thread_count(1000) == 1


def test_add_moments_refuses_what_it_cannot_read():
    g, x = _spectra((4, 3, 5), torch.float32, 0), _spectra((4, 2, 5), torch.float32, 1)
    out = torch.zeros(3, 2, 5, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"x_spectra has shape \(4, 2, 6\), expected \(4, 2, 5\)"):
        moments.add_moments(out, g, _spectra((4, 2, 6), torch.float32, 1))
    with pytest.raises(ValueError, match=r"moments has shape \(2, 2, 5\), expected \(3, 2, 5\)"):
        moments.add_moments(torch.zeros(2, 2, 5, dtype=torch.complex64), g, x)
    with pytest.raises(ValueError, match="x_spectra is torch.complex128; all three must be one of"):
        moments.add_moments(out, g, x.to(torch.complex128))
    with pytest.raises(ValueError, match="g_spectra is torch.float32"):
        moments.add_moments(out, g.real.contiguous(), x)
    with pytest.raises(ValueError, match="x_spectra must be contiguous"):
        moments.add_moments(out, g, _spectra((2, 4, 5), torch.float32, 1).transpose(0, 1))
    with pytest.raises(ValueError, match="x_spectra must be contiguous with no lazy conjugate"):
        moments.add_moments(out, g, x.conj())


def test_applies_only_to_plain_cpu_tensors_and_blocks_where_it_pays(monkeypatch):
    plain = torch.zeros(2)
    assert moments.applies(32, plain, torch.nn.Parameter(torch.zeros(2)))
    assert not moments.applies(16, plain)  # too few frequencies: the batched matmuls win
    assert not moments.applies(32, plain, torch.zeros(2, device="meta"))

    class Subclass(torch.Tensor):
        pass

    assert not moments.applies(32, plain.as_subclass(Subclass))
    used = []
    monkeypatch.setattr(moments, "add_moments", lambda *args: used.append(True))
    kernel_grad(torch.randn(4, 32), torch.randn(4, 32), 2, 2, 16)
    assert not used
    kernel_grad(torch.randn(4, 64), torch.randn(4, 64), 2, 2, 32)
    assert used


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_grad_on_the_cpu_equals_the_batched_matmul_path(dtype, monkeypatch):
    """Both ways of summing the moments give the float64 kernel gradient to the dtype's rounding, also with
    several chunks of tokens and an output gradient in bf16 (autocast's)."""
    monkeypatch.setattr(circulant, "MIN_CHUNK_ELEMENTS", 1000)  # 4 chunks of 13 tokens (the last 12)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 26, 96, generator=gen, dtype=dtype)
    grad_outs = {"same dtype": torch.randn(2, 26, 144, generator=gen, dtype=dtype)}
    grad_outs["bf16"] = grad_outs["same dtype"].bfloat16()
    for grad_out in grad_outs.values():
        reference = kernel_grad(x.double(), grad_out.double(), 3, 2, 48)
        got = kernel_grad(x, grad_out, 3, 2, 48)
        with monkeypatch.context() as patch:
            patch.setattr(moments, "applies", lambda *tensors: False)
            batched = kernel_grad(x, grad_out, 3, 2, 48)
        bound = (1e-6 if dtype == torch.float32 else 1e-13) * reference.norm()
        assert got.dtype == batched.dtype == dtype
        assert (got.double() - reference).norm() < bound and (batched.double() - reference).norm() < bound


def test_strided_inputs_and_gradients():
    """A transposed input or output gradient (as a UNet's attention or a channels-last layer hands over) makes rfft
    write strided spectra; the kernel gradient is still the dense one."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=gen, dtype=torch.float64).T  # (10 tokens, 64 features), strided
    grad_out = torch.randn(96, 10, generator=gen, dtype=torch.float64).T
    assert not x.is_contiguous() and not grad_out.is_contiguous()
    kernel = torch.zeros(3, 2, 32, dtype=torch.float64, requires_grad=True)
    (x @ circulant.block_circulant_matrix(kernel).T).backward(grad_out)
    torch.testing.assert_close(kernel_grad(x, grad_out, 3, 2, 32), kernel.grad, rtol=1e-12, atol=1e-12)


def test_a_non_finite_output_gradient_stays_non_finite():
    """A GradScaler skips a step by finding inf/NaN in the gradients: the kernel gradient must carry them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 64, generator=gen)
    for bad in (float("inf"), float("nan")):
        grad_out = torch.randn(9, 128, generator=gen)
        grad_out[4, 7] = bad
        assert not torch.isfinite(kernel_grad(x, grad_out, 4, 2, 32)).all()


def test_readers_on_both_paths_share_each_layout_once(monkeypatch):
    """q on the merged path and two narrow readers on the FFT path read one x: the merged reader's kernel gradient
    wants rfft's layout and the FFT readers' the conjugated batched one; each is computed once, the gradients
    are exact, and nothing is kept after the backward pass."""
    layouts, spectra = [], circulant._x_spectra
    monkeypatch.setattr(circulant, "_x_spectra", lambda rows, blocks, p, dtype, layout: (
        layouts.append(layout) or spectra(rows, blocks, p, dtype, layout)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 96, generator=gen, dtype=torch.float64).requires_grad_()
    paths = ["merged", "fft", "fft"]
    kernels = [(torch.randn(3, 3, 32, generator=gen, dtype=torch.float64) * 0.1).requires_grad_() for _ in paths]
    weights = [torch.randn(96, 96, generator=gen, dtype=torch.float64) for _ in paths]
    total = sum((c3a_linear(x, w, None, k, 0.5, path=path) ** 2).sum() for w, k, path in zip(weights, kernels, paths))
    total.backward()
    assert sorted(layouts) == ["conj_frequencies", "tokens"]
    dense_x = x.detach().clone().requires_grad_()
    dense_kernels = [k.detach().clone().requires_grad_() for k in kernels]
    sum(((torch.nn.functional.linear(dense_x, w) + 0.5 * dense_x @ circulant.block_circulant_matrix(k).T) ** 2
         ).sum() for w, k in zip(weights, dense_kernels)).backward()
    torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-10, atol=1e-10)
    for kernel, dense in zip(kernels, dense_kernels):
        torch.testing.assert_close(kernel.grad, dense.grad, rtol=1e-10, atol=1e-10)
    entry = circulant._READERS.get(id(x))
    assert entry is not None and all(group.spectra == {} for group in entry[1].values())
