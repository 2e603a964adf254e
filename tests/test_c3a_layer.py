"""C3AConfig validation and the C3ALinear layer on its own (dense reference computations)."""
import math

import pytest
import torch
from torch import nn

from c3a.circulant import block_circulant_matrix
from c3a.config import C3AConfig, common_block_sizes, target_matches
from c3a.layer import C3ALinear


def make_layer(d_in=32, d_out=48, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return C3ALinear(nn.Linear(d_in, d_out).to(dtype))


def cfg(**kw):
    kw.setdefault("target_modules", ["x"])
    return C3AConfig(**kw)


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, needle", [
    (dict(), "exactly one of b"),
    (dict(b=2, block_size=16), "method.b=null"),
    (dict(b=0), "b=0 must be a positive integer"),
    (dict(b=-3), "b=-3"),
    (dict(b=1.5), "b=1.5"),
    (dict(b=True), "b=True"),
    (dict(block_size=0), "block_size=0"),
    (dict(block_size=12.0), "block_size=12.0"),
    (dict(b=1, init_weights="orthogonal"), "'zeros', 'gaussian', 'kaiming_uniform'"),
    (dict(b=1, target_modules=[]), "target_modules is empty"),
    (dict(b=1, target_modules="("), "regex"),
    (dict(b=1, block_size_pattern={"q": 0}), "block_size_pattern['q']=0"),
    (dict(b=1, scale_by_d_in="yes"), "scale_by_d_in"),
])
def test_config_rejects_bad_values(kw, needle):
    kw.setdefault("target_modules", ["q"])
    with pytest.raises(ValueError, match="C3A") as err:
        C3AConfig(**kw)
    assert needle in str(err.value)


def test_config_resolves_block_sizes_in_both_notations():
    assert cfg(b=6).resolve_block_size("l.q", 768, 768) == 128
    assert cfg(block_size=128).resolve_block_size("l.q", 768, 768) == 128
    # b counts blocks along the input dim: a 4096->11008 up projection with b=16 has block 256
    assert cfg(b=16).resolve_block_size("mlp.up_proj", 4096, 11008) == 256
    llama = cfg(block_size=128, block_size_pattern={"(up|down)_proj": 256})
    assert llama.resolve_block_size("model.layers.0.mlp.down_proj", 11008, 4096) == 256
    assert llama.resolve_block_size("model.layers.0.self_attn.q_proj", 4096, 4096) == 128
    assert cfg(b=1).label() == "C3A b=1" and cfg(block_size=128).label() == "C3A block=128"


def test_config_block_size_error_names_layer_shape_and_choices():
    with pytest.raises(ValueError) as err:
        cfg(b=5).resolve_block_size("enc.query", 64, 48)
    text = str(err.value)
    assert "'enc.query'" in text and "d_in=64" in text and "d_out=48" in text
    assert "[1, 2, 4, 8, 16]" in text  # common divisors = valid block sizes
    assert "[4, 8, 16, 32, 64]" in text  # valid b = 64 / block size
    assert common_block_sizes(12, 18) == [1, 2, 3, 6]


def test_target_matching_suffix_and_regex():
    assert target_matches(["query"], "enc.layer.0.attention.self.query")
    assert not target_matches(["query"], "enc.layer.0.attention.self.query_proj")
    assert target_matches(r".*\.(query|value)", "a.value") and not target_matches(r"(query|value)", "a.value")


# -- layer ------------------------------------------------------------------------------------
def test_kernel_shape_dtype_and_frozen_base():
    layer = make_layer(32, 48)
    layer.add_adapter("a", 8, cfg(block_size=8))
    assert layer.c3a_kernel["a"].shape == (6, 4, 8) and layer.c3a_kernel["a"].dtype == torch.float32
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    with pytest.raises(ValueError, match="must divide"):
        layer.add_adapter("b", 5, cfg(block_size=5))


@pytest.mark.parametrize("init, bound", [
    ("xavier_uniform", math.sqrt(3.0) * math.sqrt(2.0 / (512 + 256))),
    ("kaiming_uniform", math.sqrt(1.0 / 512)),
])
def test_uniform_inits_use_full_layer_fans(init, bound):
    torch.manual_seed(0)
    layer = C3ALinear(nn.Linear(512, 256))
    layer.add_adapter("a", 4, cfg(block_size=4, init_weights=init))
    k = layer.c3a_kernel["a"]
    assert k.abs().max() <= bound and k.abs().max() > 0.98 * bound
    assert abs(k.std().item() - bound / math.sqrt(3.0)) < 0.02 * bound


def test_gaussian_and_zeros_inits():
    torch.manual_seed(0)
    layer = C3ALinear(nn.Linear(256, 256))
    layer.add_adapter("g", 2, cfg(block_size=2, init_weights="gaussian"))
    layer.add_adapter("z", 2, cfg(block_size=2, init_weights="zeros"))
    g = layer.c3a_kernel["g"]
    assert abs(g.mean().item()) < 0.02 and abs(g.std().item() - 1.0) < 0.02
    assert torch.count_nonzero(layer.c3a_kernel["z"]) == 0


def test_forward_is_base_plus_scaled_dense_circulant():
    layer = make_layer(32, 48)
    layer.add_adapter("a", 16, cfg(block_size=16))
    layer.set_adapters(["a"])
    x = torch.randn(3, 5, 32)
    w = layer.base_layer.weight + block_circulant_matrix(layer.c3a_kernel["a"]) / 32
    torch.testing.assert_close(layer(x), x @ w.T + layer.base_layer.bias, atol=1e-5, rtol=1e-5)
    unscaled = make_layer(32, 48)
    unscaled.add_adapter("a", 16, cfg(block_size=16, scale_by_d_in=False))
    unscaled.set_adapters(["a"])
    w = unscaled.base_layer.weight + block_circulant_matrix(unscaled.c3a_kernel["a"])
    torch.testing.assert_close(unscaled(x), x @ w.T + unscaled.base_layer.bias, atol=1e-5, rtol=1e-5)


def test_several_active_adapters_add_their_deltas():
    layer = make_layer(32, 32)
    layer.add_adapter("a", 8, cfg(block_size=8, init_weights="gaussian"))
    layer.add_adapter("b", 16, cfg(block_size=16, init_weights="gaussian"))
    layer.add_adapter("c", 4, cfg(block_size=4, init_weights="gaussian"))
    layer.set_adapters(["a", "b"])
    assert layer.c3a_kernel["a"].requires_grad and not layer.c3a_kernel["c"].requires_grad
    x = torch.randn(4, 32)
    w = layer.base_layer.weight + layer.delta_weight("a") + layer.delta_weight("b")
    torch.testing.assert_close(layer(x), x @ w.T + layer.base_layer.bias, atol=1e-5, rtol=1e-5)
    layer.disable_adapters()
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    layer.enable_adapters()
    layer.set_adapters([])
    torch.testing.assert_close(layer(x), layer.base_layer(x))
    with pytest.raises(ValueError, match="no adapter 'zz'"):
        layer.set_adapters(["zz"])


def test_merge_unmerge_exact_with_several_adapters():
    layer = make_layer(32, 64)
    layer.add_adapter("a", 8, cfg(block_size=8))
    layer.add_adapter("b", 32, cfg(block_size=32))
    layer.set_adapters(["a", "b"])
    x = torch.randn(7, 32)
    w0 = layer.base_layer.weight.detach().clone()
    expected = layer(x)
    layer.merge()
    assert layer.merged_adapters == ["a", "b"]
    assert not torch.allclose(layer.base_layer.weight, w0)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    layer.merge()
    layer.disable_adapters()  # restores the real base weight
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="disabled"):
        layer.merge()


def test_kernels_stay_float32_when_model_is_cast():
    layer = make_layer(32, 32)
    layer.add_adapter("a", 8, cfg(block_size=8))
    before = layer.c3a_kernel["a"].detach().clone()
    layer.to(torch.bfloat16)
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert layer.c3a_kernel["a"].dtype == torch.float32
    assert torch.equal(layer.c3a_kernel["a"], before)  # no round trip through bf16
    layer.set_adapters(["a"])
    out = layer(torch.randn(2, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    layer.half()
    assert layer.c3a_kernel["a"].dtype == torch.float32


def test_delete_adapter():
    layer = make_layer(16, 16)
    layer.add_adapter("a", 4, cfg(block_size=4))
    layer.set_adapters(["a"])
    layer.delete_adapter("a")
    assert "a" not in layer.c3a_kernel and layer.active_adapters == []
    x = torch.randn(2, 16)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
