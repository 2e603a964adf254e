"""Model-level C3A on a config-built RoBERTa classifier: injection, errors, merging, several adapters,
save/load, bf16 training, ``C3AMethod`` and its Hydra entry, and the paper's parameter counts."""
import copy
from pathlib import Path

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from c3a.config import C3AConfig
from c3a.layer import C3ALinear
from c3a.adapter import (active_adapters, add_c3a, c3a_layers, disable_adapters, enable_adapters, load_c3a,
                         merge_adapters, merge_and_unload, plan_c3a, save_c3a, set_adapters, unmerge_adapters)
from framework.c3a_method import C3AMethod
from framework.models import Head

HEAD = ["classifier"]
CLASSIFIER = Head(HEAD)  # the framework's view of the same head: it trains
QV = ["query", "value"]
CONF = Path(__file__).resolve().parents[1] / "conf"


def tiny_roberta(seed=0, num_labels=3):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=40, num_labels=num_labels)
    return RobertaForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 100, (3, 12), generator=g)


def logits(model, inputs):
    with torch.no_grad():
        return model(input_ids=inputs).logits


def test_add_c3a_wraps_targets_and_changes_output(inputs):
    model = tiny_roberta()
    base = logits(model, inputs)
    add_c3a(model, C3AConfig(target_modules=QV, b=2), exclude_modules=HEAD)
    layers = c3a_layers(model)
    assert sorted(n.rsplit(".", 1)[1] for n in layers) == ["query", "query", "value", "value"]
    assert all(layer.block_size["default"] == 32 for layer in layers.values())
    assert not torch.allclose(logits(model, inputs), base)  # xavier init: non-zero at step 0
    disable_adapters(model)
    torch.testing.assert_close(logits(model, inputs), base)
    enable_adapters(model)
    assert not torch.allclose(logits(model, inputs), base)


def test_non_dividing_block_size_fails_before_mutation():
    model = tiny_roberta()
    model.roberta.encoder.layer[1].attention.self.value = torch.nn.Linear(64, 48)
    with pytest.raises(ValueError) as err:
        add_c3a(model, C3AConfig(target_modules=QV, block_size=32))
    text = str(err.value)
    assert "'roberta.encoder.layer.1.attention.self.value'" in text and "d_out=48" in text
    assert "Valid block_size values: [1, 2, 4, 8, 16]" in text and "b values" in text
    assert not c3a_layers(model)  # nothing was replaced, not even the layers that fit


def test_unknown_targets_list_the_linear_layers():
    model = tiny_roberta()
    with pytest.raises(ValueError) as err:
        add_c3a(model, C3AConfig(target_modules=["q_proj"], b=1))
    text = str(err.value)
    assert "match no linear layer" in text
    assert "'query'" in text and "'out_proj'" in text and "roberta.encoder.layer.0.intermediate.dense" in text
    with pytest.raises(ValueError, match="excluding"):  # head excluded -> nothing left to match
        plan_c3a(model, C3AConfig(target_modules=["out_proj"], b=1), exclude_modules=HEAD)


def test_merge_unmerge_and_unload_exact_with_classifier_head(inputs):
    model = tiny_roberta()
    base = logits(model, inputs)
    add_c3a(model, C3AConfig(target_modules=r".*(query|value|dense)", block_size=16, init_weights="gaussian"))
    assert "classifier.dense" in c3a_layers(model)  # the head itself is adapted here
    adapted = logits(model, inputs)
    assert (adapted - base).abs().max() > 1e-2
    merge_adapters(model)
    torch.testing.assert_close(logits(model, inputs), adapted, atol=1e-5, rtol=0)
    unmerge_adapters(model)
    torch.testing.assert_close(logits(model, inputs), adapted, atol=1e-5, rtol=0)
    disable_adapters(model)
    torch.testing.assert_close(logits(model, inputs), base, atol=1e-5, rtol=0)
    enable_adapters(model)
    plain = merge_and_unload(model)
    assert not c3a_layers(plain) and type(plain.classifier.dense) is torch.nn.Linear
    torch.testing.assert_close(logits(plain, inputs), adapted, atol=1e-5, rtol=0)


def test_several_active_adapters_sum_their_deltas(inputs):
    model = tiny_roberta()
    add_c3a(model, C3AConfig(target_modules=QV, block_size=16, init_weights="gaussian"), "a")
    add_c3a(model, C3AConfig(target_modules=["value"], block_size=8, init_weights="gaussian"), "b")
    assert active_adapters(model) == ["a"]  # a later adapter does not activate itself
    set_adapters(model, ["a", "b"])
    got = logits(model, inputs)
    # dense reference: a copy of the base model with W + ΔW_a + ΔW_b written into each layer
    reference = tiny_roberta()
    with torch.no_grad():
        for name, layer in c3a_layers(model).items():
            ref_layer = reference.get_submodule(name)
            for adapter in layer.active_adapters:
                ref_layer.weight += layer.delta_weight(adapter)
    torch.testing.assert_close(got, logits(reference, inputs), atol=1e-5, rtol=0)
    set_adapters(model, "b")
    assert not torch.allclose(logits(model, inputs), got)
    with pytest.raises(ValueError, match="unknown adapters"):
        set_adapters(model, ["c"])


def test_save_load_reproduces_outputs_on_fresh_model(tmp_path, inputs):
    model = tiny_roberta()
    add_c3a(model, C3AConfig(target_modules=QV, b=4), "a", exclude_modules=HEAD)
    add_c3a(model, C3AConfig(target_modules=["query"], block_size=8, init_weights="gaussian"), "b")
    set_adapters(model, ["a", "b"])
    with torch.no_grad():
        model.classifier.out_proj.weight.mul_(3.0)  # a "trained" head that must travel with the adapter
    expected = logits(model, inputs)
    save_c3a(model, tmp_path, modules_to_save=HEAD)
    torch.manual_seed(123)  # a different RNG state: kernels must come from the file, not from init
    fresh = load_c3a(tiny_roberta(), tmp_path)
    assert torch.equal(logits(fresh, inputs), expected)
    assert active_adapters(fresh) == ["a", "b"]


def test_load_rejects_mismatched_model(tmp_path):
    model = tiny_roberta()
    add_c3a(model, C3AConfig(target_modules=QV, b=4))
    save_c3a(model, tmp_path)
    other = tiny_roberta()
    other.roberta.encoder.layer = other.roberta.encoder.layer[:1]
    with pytest.raises(ValueError, match="lacks"):
        load_c3a(other, tmp_path)


def test_bf16_model_trains_one_step_with_fp32_kernels(inputs):
    model = tiny_roberta().to(torch.bfloat16).train()
    adapted = C3AMethod(block_size=16, target_modules=QV).apply(model, CLASSIFIER)
    kernels = [p for _, p in adapted.adapter]
    assert kernels and all(k.dtype == torch.float32 for k in kernels)
    before = [k.detach().clone() for k in kernels]
    opt = torch.optim.AdamW([p for _, p in adapted.head + adapted.adapter], lr=1e-2)
    loss = model(input_ids=inputs, labels=torch.tensor([0, 1, 2])).loss
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    assert all(k.dtype == torch.float32 for k in kernels)
    assert all(not torch.equal(k, b) for k, b in zip(kernels, before))


def test_method_apply_freezes_all_but_kernels_and_head():
    model = tiny_roberta()
    method = C3AMethod(b=2, target_modules=QV)
    adapted = method.apply(model, CLASSIFIER)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n, _ in adapted.head} == {n for n in trainable if n.startswith("classifier.")}
    assert {n for n, _ in adapted.adapter} == {n for n in trainable if ".c3a_kernel." in n}
    assert trainable == {n for n, _ in adapted.head + adapted.adapter}
    assert adapted.num_adapter_params() == 4 * 64 * 64 // 32
    assert method.describe() == {"name": "c3a", "label": "C3A b=2", "b": 2, "block_size": None,
                                 "target_modules": QV, "block_size_pattern": {},
                                 "init_weights": "xavier_uniform", "scale_by_d_in": True}


def test_method_validate_raises_before_compute():
    model = tiny_roberta()
    with pytest.raises(ValueError, match="b=3"):
        C3AMethod(b=3, target_modules=QV).validate(model, CLASSIFIER)
    with pytest.raises(ValueError, match="match no module"):
        C3AMethod(b=1, target_modules=QV).validate(model, Head(["score"]))
    assert not c3a_layers(model)


def _compose_method(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    # the method file is a _global_ package: its `method:` node is what the pipeline instantiates
    with initialize_config_dir(config_dir=str(CONF / "method"), version_base=None):
        cfg = compose(config_name="c3a", overrides=overrides)
    cfg = OmegaConf.merge({"model": {"targets": {"attention": QV}}}, cfg)
    return instantiate(cfg.method)


def test_hydra_entry_both_notations():
    assert _compose_method(["method.b=6"]).describe()["label"] == "C3A b=6"
    by_size = _compose_method(["method.block_size=128", "method.b=null"])
    assert by_size.describe()["label"] == "C3A block=128" and by_size.config.target_modules == QV
    with pytest.raises(Exception, match="method.b=null"):
        _compose_method(["method.block_size=128"])
    pattern = _compose_method(["method.block_size=16", "method.b=null", "+method.block_size_pattern={value: 8}"])
    model = tiny_roberta()
    pattern.apply(model, CLASSIFIER)
    sizes = {n.rsplit(".", 1)[1]: m.block_size["default"] for n, m in c3a_layers(model).items()}
    assert sizes == {"query": 16, "value": 8}


@pytest.fixture(scope="module")
def roberta_base_meta():
    """roberta-base shapes (125M) on the meta device: counting needs no memory."""
    with torch.device("meta"):
        return RobertaForSequenceClassification(RobertaConfig(num_labels=2))


@pytest.mark.parametrize("b, block, count", [(1, 768, 18_432), (6, 128, 110_592)])
def test_paper_parameter_counts_roberta_base(roberta_base_meta, b, block, count):
    model = copy.deepcopy(roberta_base_meta)
    adapted = C3AMethod(b=b, target_modules=QV).apply(model, CLASSIFIER)
    assert adapted.num_adapter_params() == count
    layers = c3a_layers(model)
    assert len(layers) == 24 and all(isinstance(m, C3ALinear) for m in layers.values())
    assert all(m.block_size["default"] == block for m in layers.values())
