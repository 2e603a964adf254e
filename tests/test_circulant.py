"""Exactness of the block-circulant operator against the dense matrix, autograd, and PEFT's implementation."""
import pytest
import torch
import torch.nn.functional as F

from c3a.circulant import (
    MERGE_MIN_TOKENS,
    block_circulant_matmul,
    block_circulant_matrix,
    c3a_linear,
    choose_path,
    kernel_grad,
    merged_weight,
)

f64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # many tiny ops
# (d_in, d_out, block_size): square/non-square, one block (p = whole dim), b_in != b_out, the paper's 768->3072.
SHAPES = [(16, 16, 16), (16, 16, 4), (12, 20, 4), (24, 8, 8), (24, 72, 8), (768, 3072, 128), (768, 768, 768)]


def _kernel(d_in, d_out, p, dtype=f64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d_out // p, d_in // p, p, generator=gen, dtype=dtype).to(device)


def _x(shape, dtype=f64, seed=1, device="cpu"):
    """Drawn on the CPU, then moved: every device sees the same numbers."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def test_matrix_row_convention():
    """C[r, c] = w[(c - r) mod p] inside every block; block (i, j) holds kernel[i, j]."""
    kernel = _kernel(8, 12, 4)
    dense = block_circulant_matrix(kernel)
    assert dense.shape == (12, 8)
    for i in range(3):
        for j in range(2):
            for r in range(4):
                for c in range(4):
                    assert dense[4 * i + r, 4 * j + c] == kernel[i, j, (c - r) % 4]


def test_matrix_matches_peft():
    from peft.tuners.c3a.utils import get_circulant_fast

    kernel = _kernel(24, 16, 8)
    torch.testing.assert_close(block_circulant_matrix(kernel), get_circulant_fast(kernel), rtol=0, atol=1e-12)


@pytest.mark.parametrize("numpy_from", [0, 1 << 40], ids=["numpy-build", "torch-build"])
@pytest.mark.parametrize("dtype", [torch.float32, f64, torch.bfloat16])
@pytest.mark.parametrize("d_in,d_out,p", [(24, 72, 8), (72, 24, 8), (16, 16, 16)])
def test_merged_weight_equals_dense(d_in, d_out, p, dtype, numpy_from, monkeypatch):
    """Both builds of W0 + scale·C (one NumPy pass on CPU float32/64 from NUMPY_BUILD_ELEMENTS on; torch's flip +
    add otherwise) match the dense matrix, also from a strided W0 and a W0 / kernel that require grad; the result
    is a fresh tensor outside autograd, and the inputs are left untouched."""
    from c3a import circulant

    monkeypatch.setattr(circulant, "NUMPY_BUILD_ELEMENTS", numpy_from)
    used, add = [], circulant._add_by_block_rows
    monkeypatch.setattr(circulant, "_add_by_block_rows", lambda *args: used.append(args[-1]) or add(*args))
    kernel = _kernel(d_in, d_out, p).to(dtype).requires_grad_()
    weight = _x((d_in, d_out)).to(dtype).T.requires_grad_()  # a transposed (non-contiguous) W0
    before = weight.detach().clone(), kernel.detach().clone()
    merged = merged_weight(weight, kernel, -0.75)
    assert bool(used) == (numpy_from == 0 and dtype != torch.bfloat16)  # NumPy has no bfloat16
    expected = weight.detach().double() - 0.75 * block_circulant_matrix(kernel.detach().double())
    tolerance = {torch.float32: 1e-6, f64: 1e-14, torch.bfloat16: 2e-2}[dtype]
    assert merged.dtype == dtype and merged.shape == (d_out, d_in) and not merged.requires_grad
    torch.testing.assert_close(merged.double(), expected, rtol=tolerance, atol=tolerance)
    assert torch.equal(weight.detach(), before[0]) and torch.equal(kernel.detach(), before[1])
    assert merged.data_ptr() != weight.data_ptr()


def test_merged_weight_split_over_threads_is_the_same(monkeypatch):
    """A large W_eff is built by block rows in several threads (here 4 for 9 block rows: uneven parts)."""
    from c3a import circulant

    kernel, weight = _kernel(16, 72, 8, dtype=torch.float32), _x((72, 16)).float()
    monkeypatch.setattr(circulant, "NUMPY_BUILD_ELEMENTS", 0)
    single = merged_weight(weight, kernel, 0.3)
    monkeypatch.setattr(circulant, "PARALLEL_BUILD_ELEMENTS", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    used, add = [], circulant._add_by_block_rows
    monkeypatch.setattr(circulant, "_add_by_block_rows", lambda *args: used.append(args[-1]) or add(*args))
    assert torch.equal(merged_weight(weight, kernel, 0.3), single) and used == [4]


@pytest.mark.parametrize("d_in,d_out,p", SHAPES)
def test_matmul_equals_dense_float64(d_in, d_out, p):
    kernel = _kernel(d_in, d_out, p)
    x = _x((2, 5, d_in))
    expected = x @ block_circulant_matrix(kernel).T
    out = block_circulant_matmul(x, kernel)
    assert out.shape == (2, 5, d_out) and out.dtype == f64
    assert (out - expected).abs().max() <= 1e-10 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("path", ["merged", "fft"])
@pytest.mark.parametrize("d_in,d_out,p", SHAPES)
def test_c3a_linear_equals_dense_float64(d_in, d_out, p, path, device):
    kernel = _kernel(d_in, d_out, p, device=device)
    weight = _x((d_out, d_in), seed=2, device=device)
    bias = _x((d_out,), seed=3, device=device)
    x = _x((3, 4, d_in), device=device)
    scale = 1.0 / d_in
    expected = F.linear(x, weight, bias) + scale * (x @ block_circulant_matrix(kernel).T)
    out = c3a_linear(x, weight, bias, kernel, scale, path=path)
    assert out.shape == expected.shape and out.dtype == f64
    assert (out - expected).abs().max() <= 1e-10 * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("path", ["merged", "fft"])
def test_many_tokens_several_chunks(path, monkeypatch, device):
    """Chunked processing (several chunks, a partial last one) is exact in value and both gradients."""
    import c3a.circulant as circulant

    monkeypatch.setattr(circulant, "MIN_CHUNK_ELEMENTS", 1 << 12)  # 5,000 tokens x 96 features: 4 chunks
    assert circulant._chunk_tokens(5000, 96) == 1250
    d_in, d_out, p = 64, 96, 16
    kernel = _kernel(d_in, d_out, p, device=device).requires_grad_()
    weight = _x((d_out, d_in), seed=2, device=device)
    x = _x((5, 1000, d_in), device=device).requires_grad_()
    grad_out = _x((5, 1000, d_out), seed=7, device=device)
    out = c3a_linear(x, weight, None, kernel, 0.25, path=path)
    out.backward(grad_out)
    dense_kernel = kernel.detach().clone().requires_grad_()
    dense_x = x.detach().clone().requires_grad_()
    expected = F.linear(dense_x, weight) + 0.25 * dense_x @ block_circulant_matrix(dense_kernel).T
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(kernel.grad, dense_kernel.grad, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("p", [16, 32])  # the batched matmuls; on the CPU from 32 on the moments loop
def test_kernel_grad_equals_dense_gradient(p, device):
    """The FFT kernel gradient equals autograd through the dense matrix, with chunking over many tokens."""
    d_in, d_out = 64, 96
    kernel = _kernel(d_in, d_out, p, device=device).requires_grad_()
    x = _x((5000, d_in), device=device)  # several CPU chunks
    grad_out = _x((5000, d_out), seed=7, device=device)
    (x @ block_circulant_matrix(kernel).T).backward(grad_out)
    got = kernel_grad(x, grad_out, d_out // p, d_in // p, p)
    torch.testing.assert_close(got, kernel.grad, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("d_in,d_out,p", [(8, 8, 8), (8, 12, 4), (12, 6, 3)])
def test_gradcheck_matmul(d_in, d_out, p):
    kernel = _kernel(d_in, d_out, p).requires_grad_()
    x = _x((2, 3, d_in)).requires_grad_()
    assert torch.autograd.gradcheck(block_circulant_matmul, (x, kernel))


@pytest.mark.parametrize("path", ["merged", "fft"])
@pytest.mark.parametrize("d_in,d_out,p", [(8, 8, 8), (8, 12, 4), (12, 6, 3)])
def test_gradcheck_c3a_linear(d_in, d_out, p, path, device):
    kernel = _kernel(d_in, d_out, p, device=device).requires_grad_()
    weight = _x((d_out, d_in), seed=2, device=device).requires_grad_()
    bias = _x((d_out,), seed=3, device=device).requires_grad_()
    x = _x((2, 3, d_in), device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: c3a_linear(*a, 0.7, path=path), (x, weight, bias, kernel))


@pytest.mark.parametrize("path", ["merged", "fft"])
def test_frozen_base_and_kernel_only(path):
    """Frozen weight, x without grad: only the kernel gets a gradient, equal to the dense one."""
    d, p = 32, 8
    kernel = _kernel(d, d, p).requires_grad_()
    weight, x, grad_out = _x((d, d), seed=2), _x((100, d)), _x((100, d), seed=4)
    c3a_linear(x, weight, None, kernel, 0.5, path=path).backward(grad_out)
    dense_kernel = kernel.detach().clone().requires_grad_()
    (0.5 * x @ block_circulant_matrix(dense_kernel).T).backward(grad_out)
    torch.testing.assert_close(kernel.grad, dense_kernel.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d_in,d_out,p", [(64, 64, 16), (32, 96, 32), (768, 768, 128)])
def test_matches_peft_block_circular_convolution(d_in, d_out, p):
    """Same forward and kernel gradient as PEFT's BlockCircularConvolution (float32; PEFT's layer divides by d_in).

    The x gradient is checked against autograd through the dense matrix instead: PEFT's is wrong (see below).
    """
    from peft.tuners.c3a.utils import BlockCircularConvolution

    kernel32 = _kernel(d_in, d_out, p, dtype=torch.float32)
    x32 = _x((4, 50, d_in), dtype=torch.float32)
    grad_out = _x((4, 50, d_out), dtype=torch.float32, seed=5)
    results = {}
    for name in ("peft", "dense", "ours", "merged", "fft"):
        x = x32.clone().requires_grad_()
        kernel = kernel32.clone().requires_grad_()
        if name == "peft":
            out = BlockCircularConvolution.apply(x, kernel) / d_in
        elif name == "dense":
            out = x @ block_circulant_matrix(kernel).T / d_in
        elif name == "ours":
            out = block_circulant_matmul(x, kernel) / d_in
        else:
            out = c3a_linear(x, torch.zeros(d_out, d_in), None, kernel, 1.0 / d_in, path=name)
        out.backward(grad_out)
        results[name] = {"out": out.detach(), "x_grad": x.grad, "kernel_grad": kernel.grad}
    for name in ("ours", "merged", "fft"):
        for key, reference in (("out", "peft"), ("kernel_grad", "peft"), ("x_grad", "dense")):
            want = results[reference][key]
            torch.testing.assert_close(results[name][key], want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_peft_x_gradient_differs_from_dense():
    """PEFT 0.21's BlockCircularConvolution.backward returns Σ_k g[k] w[t+k] for dL/dx instead of the correct
    Σ_k g[k] w[t-k] (its forward and kernel gradient are right). If this starts failing, PEFT fixed it."""
    from peft.tuners.c3a.utils import BlockCircularConvolution

    kernel = _kernel(16, 16, 8).requires_grad_()
    x = _x((3, 16)).requires_grad_()
    assert not torch.autograd.gradcheck(BlockCircularConvolution.apply, (x, kernel), raise_exception=False)
    assert torch.autograd.gradcheck(block_circulant_matmul, (x, kernel))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype, device):
    """bf16/fp16 model: output in the model dtype near the float32 result; kernel gradient stays float32."""
    d_in, d_out, p = 128, 256, 32
    kernel32 = _kernel(d_in, d_out, p, dtype=torch.float32, device=device) * 0.1
    weight32 = _x((d_out, d_in), dtype=torch.float32, seed=2, device=device) / d_in ** 0.5
    bias32 = _x((d_out,), dtype=torch.float32, seed=3, device=device)
    x32 = _x((2, 40, d_in), dtype=torch.float32, device=device)
    grad_out = _x((2, 40, d_out), dtype=torch.float32, seed=4, device=device)

    ref_kernel = kernel32.clone().requires_grad_()
    ref_x = x32.clone().requires_grad_()
    ref = c3a_linear(ref_x, weight32, bias32, ref_kernel, 1.0)
    ref.backward(grad_out)

    kernel = kernel32.clone().requires_grad_()
    x = x32.to(dtype).requires_grad_()
    assert choose_path(x, weight32.to(dtype), kernel) == "fft"
    out = c3a_linear(x, weight32.to(dtype), bias32.to(dtype), kernel, 1.0)
    out.backward(grad_out.to(dtype))
    assert out.dtype == dtype and x.grad.dtype == dtype
    assert kernel.grad.dtype == torch.float32
    tol = 0.03 if dtype == torch.bfloat16 else 0.005
    for got, want in [(out, ref), (x.grad, ref_x.grad), (kernel.grad, ref_kernel.grad)]:
        err = (got.float() - want).norm() / want.norm()
        assert err < tol, err
    # the adapter is not rounded away: removing it changes the output by about its size
    base_only = F.linear(x.detach(), weight32.to(dtype), bias32.to(dtype))
    delta_ref = ref.detach() - F.linear(x32, weight32, bias32)
    torch.testing.assert_close((out.detach() - base_only).float(), delta_ref, rtol=0.05, atol=0.05)


def test_choose_path():
    kernel = _kernel(32, 32, 8, dtype=torch.float32)
    weight = torch.zeros(32, 32)
    many, few = torch.zeros(2, MERGE_MIN_TOKENS // 2, 32), torch.zeros(MERGE_MIN_TOKENS - 1, 32)
    wide = _kernel(1024, 1024, 8, dtype=torch.float32)
    assert choose_path(torch.zeros(500, 1024), torch.zeros(1024, 1024), wide) == "fft"  # W_eff costs more
    assert choose_path(torch.zeros(512, 1024), torch.zeros(1024, 1024), wide) == "merged"
    assert choose_path(many, weight, kernel) == "merged"
    assert choose_path(few, weight, kernel) == "fft"
    assert choose_path(many.bfloat16(), weight.bfloat16(), kernel) == "fft"
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 weights: merged, as autocast casts any weight
        assert choose_path(many, weight, kernel) == "merged"
        assert choose_path(many.bfloat16(), weight, kernel) == "merged"
        assert choose_path(few, weight, kernel) == "fft"
        assert choose_path(many.bfloat16(), weight.bfloat16(), kernel) == "fft"  # a bf16 model never merges


@pytest.mark.parametrize("bias", [False, True])
def test_merged_under_autocast_is_autocast_of_the_merged_weight(bias, device):
    """Under autocast the merged path computes what autocast makes of F.linear(x, W0 + scale·C): the forward and
    grad_x use bf16(W_eff); the kernel gradient is the FFT path's (the float64 one to float32 rounding), computed from
    the float32 input."""
    d_in, d_out, p, scale = 128, 192, 32, 0.7
    weight = _x((d_out, d_in), dtype=torch.float32, seed=2, device=device) / d_in ** 0.5
    bias_ = _x((d_out,), dtype=torch.float32, seed=3, device=device).requires_grad_() if bias else None
    kernel = (_kernel(d_in, d_out, p, dtype=torch.float32, device=device) * 0.1).requires_grad_()
    x = _x((2, 40, d_in), dtype=torch.float32, device=device).requires_grad_()
    grad_out = _x((2, 40, d_out), dtype=torch.bfloat16, seed=4, device=device)
    grads = {}
    for path in ("merged", "fft"):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            assert choose_path(x, weight, kernel) == "merged"
            out = c3a_linear(x, weight, bias_, kernel, scale, path=path)
        assert out.dtype == torch.bfloat16
        grads[path] = torch.autograd.grad(out, [x, kernel] + ([bias_] if bias else []), grad_out)
        if path == "merged":
            merged = merged_weight(weight, kernel, scale).bfloat16()  # tested against the dense matrix above
            want = F.linear(x.detach().bfloat16(), merged, None if bias_ is None else bias_.detach().bfloat16())
            # equal but for a rare last bit (BLAS kernels may round apart); the FFT path differs in about half
            assert (out != want).float().mean() < 0.01
            torch.testing.assert_close(out, want)
            torch.testing.assert_close(grads[path][0], (grad_out @ merged).float(), rtol=2 ** -7, atol=1e-3)
    # both kernel gradients are float32 sums of the float32 input's spectra, in different orders
    reference = scale * kernel_grad(x.detach().double(), grad_out.double(), d_out // p, d_in // p, p)
    for path in grads:
        assert (grads[path][1].double() - reference).norm() < 1e-6 * reference.norm()
    if bias:
        torch.testing.assert_close(grads["merged"][2], grads["fft"][2], rtol=1e-2, atol=1e-2)
    assert grads["merged"][1].dtype == torch.float32 and grads["merged"][0].dtype == torch.float32


def test_bad_inputs_raise():
    kernel = _kernel(16, 16, 4)
    with pytest.raises(ValueError, match="features"):
        block_circulant_matmul(_x((3, 12)), kernel)
    with pytest.raises(ValueError, match="path"):
        c3a_linear(_x((3, 16)), _x((16, 16)), None, kernel, 1.0, path="dense")
    with pytest.raises(ValueError, match="merged path needs one full-precision dtype"):
        c3a_linear(_x((3, 16)).float(), _x((16, 16)).float(), None, kernel, 1.0, path="merged")


@pytest.mark.parametrize("path", ["merged", "fft"])
def test_both_paths_under_torch_compile(path, monkeypatch):
    """Traced whole by torch.compile (fullgraph; aot_eager needs no C++ toolchain), both paths give eager's output
    and gradients; the merged one builds W_eff with torch there, not NumPy (which sees no fake tensors)."""
    from c3a import circulant

    monkeypatch.setattr(circulant, "NUMPY_BUILD_ELEMENTS", 0)  # eager: the NumPy build even at this size
    torch._dynamo.reset()
    kernel = _kernel(24, 72, 8, dtype=torch.float32)
    weight = _x((72, 24), seed=2).float()
    x = _x((3, 5, 24)).float()
    grad_out = _x((3, 5, 72), seed=7).float()
    results = []
    for run in (lambda *a: c3a_linear(*a, path=path),
                torch.compile(lambda *a: c3a_linear(*a, path=path), backend="aot_eager", fullgraph=True)):
        k, xi = kernel.clone().requires_grad_(), x.clone().requires_grad_()
        out = run(xi, weight, None, k, 0.5)
        out.backward(grad_out)
        results.append((out.detach(), xi.grad, k.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def _count_x_transforms(monkeypatch) -> list:
    """The block size of every transform of an input (the kernel gradient's x side), in order."""
    from c3a import circulant

    transforms, spectra = [], circulant._x_spectra
    monkeypatch.setattr(circulant, "_x_spectra", lambda rows, blocks, p, dtype, layout: (
        transforms.append(p) or spectra(rows, blocks, p, dtype, layout)))
    return transforms


def _groups_of(x):
    from c3a import circulant

    entry = circulant._READERS.get(id(x))
    return {} if entry is None or entry[0]() is not x else entry[1]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("path", ["merged", "fft"])
def test_layers_reading_one_input_share_its_spectra(path, chunked, monkeypatch, device):
    """q, k and v read one x: within a backward pass its conj spectra are computed once per block size (here 2 of
    4 layers' worth: one layer has another block size), also when the readers cut the tokens into different
    chunks; the gradients stay exact and the spectra are dropped after the last reader."""
    from c3a import circulant

    if chunked:  # 15 tokens; the readers' chunk sizes differ with d_out
        monkeypatch.setattr(circulant, "MIN_CHUNK_ELEMENTS", 200)
        assert [circulant._chunk_tokens(15, f) for f in (72, 48, 24)] == [4, 4, 8]
    transforms = _count_x_transforms(monkeypatch)
    x = _x((3, 5, 24), device=device).requires_grad_()
    shapes = [(72, 8), (24, 8), (48, 8), (48, 4)]  # (d_out, block size): three at 8, one at 4
    kernels = [_kernel(24, d_out, p, seed=i, device=device).requires_grad_() for i, (d_out, p) in enumerate(shapes)]
    weights = [_x((d_out, 24), seed=10 + i, device=device) for i, (d_out, _) in enumerate(shapes)]
    total = sum((c3a_linear(x, w, None, k, 0.5, path=path) ** 2).sum() for w, k in zip(weights, kernels))
    groups = _groups_of(x)
    assert sorted(g.readers for g in groups.values()) == [1, 3]
    total.backward()
    # chunked: the 72- and 48-wide readers cut 4-token chunks (0, 4, 8, 12), the 24-wide one 8 (0, 8): 4 + 2
    # transforms at block 8; the block-4 reader alone, 4 chunks
    assert [transforms.count(8), transforms.count(4)] == ([6, 4] if chunked else [1, 1])
    assert all(g.spectra == {} and g.closed for g in groups.values())
    dense_x = x.detach().clone().requires_grad_()
    dense_kernels = [k.detach().clone().requires_grad_() for k in kernels]
    sum(((F.linear(dense_x, w) + 0.5 * dense_x @ block_circulant_matrix(k).T) ** 2).sum()
        for w, k in zip(weights, dense_kernels)).backward()
    torch.testing.assert_close(x.grad, dense_x.grad, rtol=1e-10, atol=1e-10)
    for kernel, dense in zip(kernels, dense_kernels):
        torch.testing.assert_close(kernel.grad, dense.grad, rtol=1e-10, atol=1e-10)


def test_each_forward_pass_starts_its_own_group(monkeypatch):
    """The same tensor read again in a new forward pass (a fixed batch, step after step) forms a new group: one
    reader then keeps nothing, and the kernel gradient is the same. Without a graph nothing is registered."""
    transforms = _count_x_transforms(monkeypatch)
    kernel, weight = _kernel(24, 24, 8).requires_grad_(), _x((24, 24), seed=2)
    x = _x((3, 5, 24)).requires_grad_()
    grads = []
    for _ in range(2):
        c3a_linear(x, weight, None, kernel, 0.5, path="merged").sum().backward()
        grads.append(kernel.grad)
        kernel.grad = None
    assert transforms == [8, 8] and torch.equal(grads[0], grads[1])
    assert sorted(g.readers for g in _groups_of(x).values()) == [1]  # the first group was replaced
    with torch.no_grad():
        other = _x((3, 5, 24), seed=5)
        c3a_linear(other, weight, None, kernel, 0.5, path="merged")
    assert _groups_of(other) == {}


def test_merged_under_autocast_learns_as_the_fft_path(device):
    """Training kernels from zero under bf16 autocast: the merged path (forward through bf16(W0 + C)) fits a
    block-circulant target as the exact FFT path does, although tiny early kernels round away in its forward."""
    d, p, tokens = 64, 16, 256
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(d, d, generator=gen) / d ** 0.5).to(device)
    target_kernel = (torch.randn(d // p, d // p, p, generator=gen) * 0.05).to(device)
    x = torch.randn(tokens, d, generator=gen).to(device)
    y = F.linear(x, weight + block_circulant_matrix(target_kernel))
    losses = {}
    for path in ("merged", "fft"):
        kernel = torch.zeros(d // p, d // p, p, requires_grad=True, device=device)
        optimizer = torch.optim.Adam([kernel], lr=0.01)
        for _ in range(60):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.mse_loss(c3a_linear(x, weight, None, kernel, 1.0, path=path).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        losses[path] = loss.item()
    start = F.mse_loss(F.linear(x, weight), y).item()
    assert losses["fft"] < 0.05 * start and losses["merged"] < 0.05 * start, (start, losses)
    assert abs(losses["merged"] - losses["fft"]) < 0.2 * losses["fft"] + 1e-4, losses


def test_readers_under_autocast_share_the_float32_input(monkeypatch, device):
    """Under autocast q, k and v (merged path) still transform their shared float32 input once, and their kernel
    gradients are the FFT path's (the bf16 casts each matmul makes are not what the kernel gradient reads)."""
    transforms = _count_x_transforms(monkeypatch)
    x = _x((2, 64, 64), dtype=torch.float32, device=device).requires_grad_()
    kernels = [(_kernel(64, d_out, 16, dtype=torch.float32, seed=i, device=device) * 0.1).requires_grad_()
               for i, d_out in enumerate((64, 32, 32))]
    weights = [_x((d_out, 64), dtype=torch.float32, seed=10 + i, device=device) / 8
               for i, d_out in enumerate((64, 32, 32))]
    grads = {}
    for path in ("merged", "fft"):
        transforms.clear()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            outs = [c3a_linear(x, w, None, k, 0.5, path=path) for w, k in zip(weights, kernels)]
        grads[path] = torch.autograd.grad([o.float().square().sum() for o in outs], kernels)
        assert transforms == [16], (path, transforms)
    for merged, fft in zip(grads["merged"], grads["fft"]):
        assert merged.dtype == torch.float32
        torch.testing.assert_close(merged, fft, rtol=0.05, atol=0.05 * fft.abs().max().item())
