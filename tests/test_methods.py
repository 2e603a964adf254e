"""The checks every method passes (DESIGN.md), on a tiny RoBERTa classifier built from a config.

Methods are built from their ``conf/method/*.yaml`` with the roberta-base entry's targets, as a run
builds them, with small hyperparameters where the paper's do not fit a 64-wide model.
"""
from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import RobertaConfig, RobertaForCausalLM, RobertaForSequenceClassification

from framework.models import Head

CONF = Path(__file__).resolve().parents[1] / "conf"
HEAD = Head(["classifier"])


def build_method(name: str, **overrides):
    method_file = OmegaConf.load(CONF / "method" / f"{name}.yaml")
    # baseline files are `@package _global_` (they also set their learning rates): take their method node
    method_cfg = method_file.method if "method" in method_file else method_file
    cfg = OmegaConf.create({"model": OmegaConf.load(CONF / "model" / "roberta-base.yaml"), "method": method_cfg})
    for key, value in overrides.items():
        cfg.method[key] = value
    return instantiate(cfg.method, _convert_="all")


TINY = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(dtype=torch.float32, seed: int = 0) -> RobertaForSequenceClassification:
    torch.manual_seed(seed)
    return RobertaForSequenceClassification(RobertaConfig(**TINY, num_labels=2)).to(dtype)


def tiny_causal_lm(seed: int = 0) -> RobertaForCausalLM:
    """A causal LM whose ``lm_head.decoder`` is tied to the word embeddings, as in many LLMs."""
    torch.manual_seed(seed)
    return RobertaForCausalLM(RobertaConfig(**TINY, is_decoder=True))


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, 100, (4, 10), generator=g),
            "attention_mask": torch.ones(4, 10, dtype=torch.long),
            "labels": torch.randint(0, 2, (4,), generator=g)}


def logits(model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits.float()


# -- per-method expectations --------------------------------------------------------------------
def peft_merge(model):
    model.merge_adapter()


def peft_unmerge(model):
    model.unmerge_adapter()


@contextmanager
def peft_disabled(model):
    with model.disable_adapter():
        yield


def c3a_merge(model):
    from c3a.adapter import merge_adapters
    merge_adapters(model)


def c3a_unmerge(model):
    from c3a.adapter import unmerge_adapters
    unmerge_adapters(model)


@contextmanager
def c3a_disabled(model):
    from c3a.adapter import disable_adapters, enable_adapters
    disable_adapters(model)
    try:
        yield
    finally:
        enable_adapters(model)


def is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


# name -> (config overrides, "should this non-head parameter train?", merge, unmerge, disable)
SPECS = {
    "lora": ({"r": 4}, lambda n: ".lora_A." in n or ".lora_B." in n, peft_merge, peft_unmerge, peft_disabled),
    "dora": ({"r": 4}, lambda n: any(f".{k}." in n for k in ("lora_A", "lora_B", "lora_magnitude_vector")),
             peft_merge, peft_unmerge, peft_disabled),
    "vera": ({"r": 16}, lambda n: ".vera_lambda_" in n, peft_merge, peft_unmerge, peft_disabled),
    "boft": ({}, lambda n: ".boft_R." in n or ".boft_s." in n, peft_merge, peft_unmerge, peft_disabled),
    "ia3": ({}, lambda n: ".ia3_l." in n, peft_merge, peft_unmerge, peft_disabled),
    "c3a": ({"b": 2}, lambda n: ".c3a_kernel." in n, c3a_merge, c3a_unmerge, c3a_disabled),
    "bitfit": ({}, is_bias, None, None, None),
    "full": ({}, lambda n: True, None, None, None),
    "head": ({}, lambda n: False, None, None, None),
}
# layers each adapter method must reach: query/value for the attention methods, all six for (IA)3
ADAPTED_LAYERS = {"lora": 4, "dora": 4, "vera": 4, "boft": 4, "c3a": 4, "ia3": 12}
METHODS = list(SPECS)
MERGEABLE = [m for m in METHODS if SPECS[m][2] is not None]


def adapt(name: str, dtype=torch.float32, seed: int = 0, **extra):
    overrides, *_ = SPECS[name]
    method = build_method(name, **{**overrides, **extra})
    base = tiny_model(dtype)
    reference = copy.deepcopy(base)
    torch.manual_seed(seed)  # adapter init
    return method, method.apply(base, HEAD), reference


def train_steps(adapted, steps: int = 3, lr: float = 1e-2) -> list[float]:
    params = [p for _, p in adapted.head + adapted.adapter]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    adapted.model.train()
    losses = []
    for step in range(steps):
        loss = adapted.model(**batch(seed=10 + step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def perturb_adapter(adapted, scale: float = 0.3) -> None:
    """Make every adapter parameter non-trivial (several inits are exactly identity)."""
    g = torch.Generator().manual_seed(7)
    for _, p in adapted.adapter:
        p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


# -- the checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_only_intended_parameters_train(name):
    _, should_train, *_ = SPECS[name]
    _, adapted, _ = adapt(name)
    model = adapted.model
    head_names = {n for n, _ in adapted.head}
    adapter_names = {n for n, _ in adapted.adapter}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == head_names | adapter_names and not head_names & adapter_names
    # the head is the whole classifier, whatever wrapper prefixes PEFT adds
    assert head_names == {n for n, _ in model.named_parameters() if ".classifier." in f".{n}"}
    assert len(head_names) == 4
    expected = {n for n, _ in model.named_parameters() if n not in head_names and should_train(n)}
    assert adapter_names == expected
    if name in ADAPTED_LAYERS:
        layers = {re.sub(r"\.(lora_[AB]|lora_magnitude_vector|vera_lambda_[bd]|boft_[Rs]|ia3_l|c3a_kernel)\..*", "", n)
                  for n in adapter_names}
        assert len(layers) == ADAPTED_LAYERS[name], sorted(layers)
    if name == "head":
        assert adapted.num_adapter_params() == 0
    desc = build_method(name, **SPECS[name][0]).describe()
    assert desc["name"] == name and desc["label"]


@pytest.mark.parametrize("name", METHODS)
def test_steps_change_only_trainable_parameters(name):
    _, adapted, _ = adapt(name)
    before = {n: p.detach().clone() for n, p in adapted.model.named_parameters()}
    losses = train_steps(adapted, steps=3)
    assert all(torch.isfinite(torch.tensor(losses)))
    trainable = {n for n, _ in adapted.head + adapted.adapter}
    for n, p in adapted.model.named_parameters():
        if n in trainable:
            assert not torch.equal(before[n], p), f"{n} trains but did not change"
        else:
            assert torch.equal(before[n], p), f"{n} is frozen but changed"


@pytest.mark.parametrize("name", METHODS)
def test_save_load_gives_identical_outputs(name):
    method, adapted, _ = adapt(name)
    train_steps(adapted, steps=2)
    perturb_adapter(adapted)
    state = adapted.trainable_state_dict()
    inputs = batch(seed=3)
    expected = logits(adapted.model, inputs)

    # a fresh model (same pretrained weights), adapted with a different adapter init, then loaded
    _, fresh, _ = adapt(name, seed=123)
    if name not in ("head", "bitfit"):  # those have no random init of their own
        assert not torch.equal(logits(fresh.model, inputs), expected)
    result = fresh.model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(state) <= {n for n, _ in fresh.model.named_parameters()}
    assert torch.equal(logits(fresh.model, inputs), expected)


@pytest.mark.parametrize("name", MERGEABLE)
def test_merge_unmerge(name):
    _, _, merge, unmerge, _ = SPECS[name]
    _, adapted, _ = adapt(name)
    train_steps(adapted, steps=2)
    perturb_adapter(adapted, scale=0.05)
    inputs = batch(seed=4)
    weights = {n: p.detach().clone() for n, p in adapted.model.named_parameters() if n.endswith("base_layer.weight")}
    assert weights
    unmerged = logits(adapted.model, inputs)
    merge(adapted.model)
    changed = [n for n, p in adapted.model.named_parameters() if n in weights and not torch.equal(weights[n], p)]
    assert changed, "merging left every base weight as it was"
    torch.testing.assert_close(logits(adapted.model, inputs), unmerged, atol=1e-5, rtol=1e-5)
    unmerge(adapted.model)
    for n, p in adapted.model.named_parameters():
        if n in weights:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits(adapted.model, inputs), unmerged, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", MERGEABLE)
def test_disabled_adapter_gives_base_output(name):
    _, _, _, _, disabled = SPECS[name]
    _, adapted, reference = adapt(name)
    perturb_adapter(adapted)  # no training: the head is still the reference model's
    inputs = batch(seed=5)
    base = logits(reference, inputs)
    assert not torch.allclose(logits(adapted.model, inputs), base, atol=1e-4)
    with disabled(adapted.model):
        torch.testing.assert_close(logits(adapted.model, inputs), base, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(logits(adapted.model, inputs), base, atol=1e-4)


@pytest.mark.parametrize("name", METHODS)
def test_bf16_model_trains_a_step(name):
    _, adapted, _ = adapt(name, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in adapted.adapter + adapted.head}
    losses = train_steps(adapted, steps=1, lr=1e-1)
    assert torch.isfinite(torch.tensor(losses)).all()
    changed = [n for n, p in adapted.adapter + adapted.head if not torch.equal(before[n], p)]
    assert changed


BAD = [
    ("lora", {"r": 0}, "positive integer"),
    ("lora", {"lora_dropout": 1.5}, "lora_dropout"),
    ("lora", {"target_modules": ["nonexistent"]}, r"match no module.*attention\.self\.query"),
    ("lora", {"target_modules": ["dense"]}, "inside the task head"),
    ("lora", {"target_modules": ["attention"]}, "not nn.Linear"),
    ("vera", {"r": -1}, "positive integer"),
    ("boft", {"boft_block_size": 0}, "positive integer"),
    ("boft", {"boft_block_size": 7}, "multiple of"),
    ("ia3", {"target_modules": "nothing.*"}, "match no module"),
    ("ia3", {"feedforward_modules": r".*classifier\.dense"}, "feedforward_modules"),
    ("c3a", {"b": 3}, "block size must divide"),
]


@pytest.mark.parametrize("name,overrides,message", BAD, ids=[f"{b[0]}-{list(b[1])[0]}" for b in BAD])
def test_bad_hyperparameters_raise_before_the_model_changes(name, overrides, message):
    method = build_method(name, **{**SPECS[name][0], **overrides})
    model = tiny_model()
    modules_before = [n for n, _ in model.named_modules()]
    with pytest.raises(ValueError, match=message):
        method.apply(model, HEAD)
    assert [n for n, _ in model.named_modules()] == modules_before


@pytest.mark.parametrize("name,overrides", [("c3a", {"b": 0}), ("lora", {"r": "8"}), ("vera", {"r": 2.5})])
def test_bad_types_raise_clearly(name, overrides):
    """Some methods check in the constructor (Hydra then wraps the ValueError), others in validate."""
    from hydra.errors import InstantiationException

    with pytest.raises((ValueError, InstantiationException), match="positive integer"):
        build_method(name, **overrides).validate(tiny_model(), HEAD)


@pytest.mark.parametrize("name", METHODS)
def test_missing_head_is_an_error(name):
    method = build_method(name, **SPECS[name][0])
    with pytest.raises(ValueError, match="match no module"):
        method.validate(tiny_model(), Head(["no_such_head"]))


@pytest.mark.parametrize("name", METHODS)
def test_frozen_head_stays_frozen_and_outside_both_groups(name):
    """A causal LM's ``lm_head`` does not train (``Head(..., trains=False)``): whatever the method, its
    parameters (the word embeddings too, which it is tied to) stay frozen and in neither group."""
    overrides, should_train, *_ = SPECS[name]
    model = tiny_causal_lm()
    lm_head = Head(["lm_head"], trains=False)
    head_ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n.split(".")[0] == "lm_head"}
    assert id(model.roberta.embeddings.word_embeddings.weight) in head_ids  # the tie this test relies on
    head_before = {id(p): p.detach().clone() for p in model.parameters() if id(p) in head_ids}

    if name == "head":  # a frozen head leaves head-only training nothing: refused before any compute
        with pytest.raises(ValueError, match="trains nothing"):
            build_method(name, **overrides).validate(model, lm_head)
        return
    adapted = build_method(name, **overrides).apply(model, lm_head)
    assert adapted.head == [] and adapted.num_head_params() == 0
    assert not {id(p) for _, p in adapted.adapter} & head_ids
    params = dict(adapted.model.named_parameters())
    assert all(not p.requires_grad for p in params.values() if id(p) in head_ids)
    expected = {n for n, p in params.items() if id(p) not in head_ids and should_train(n)}
    assert {n for n, _ in adapted.adapter} == expected
    assert {n for n, p in params.items() if p.requires_grad} == expected

    assert expected
    optimizer = torch.optim.AdamW([p for _, p in adapted.adapter], lr=1e-2)
    inputs = batch(seed=11)
    loss = adapted.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()
    for p in adapted.model.parameters():
        if id(p) in head_ids:
            assert p.grad is None and torch.equal(p, head_before[id(p)])


def test_a_method_writes_only_its_hooks_and_the_base_runs_the_sequence():
    """``Method.apply`` is one template (validate → adapt → head gradients and groups): a method that only
    says which parameters it trains gets the hyperparameter check first, the head check, its own model
    check, and a head that trains in its own group, without writing any of that sequence itself."""
    from framework.method import Method, freeze_all

    calls = []

    class LastLayerNorm(Method):
        name = "last-layer-norm"

        def check_hyperparameters(self):
            calls.append("hyperparameters")

        def check_model(self, model, head):
            calls.append("model")

        def adapt(self, model, head):
            calls.append("adapt")
            freeze_all(model)
            model.roberta.encoder.layer[-1].output.LayerNorm.weight.requires_grad_(True)
            return model

    method = LastLayerNorm(name="lln")
    assert method.name == "lln" and LastLayerNorm().name == "last-layer-norm"
    with pytest.raises(ValueError, match="match no module"):
        method.apply(tiny_model(), Head(["no_such_head"]))
    assert calls == ["hyperparameters"]  # the head check stops it before the model check and any change

    calls.clear()
    adapted = method.apply(tiny_model(), HEAD)
    assert calls == ["hyperparameters", "model", "adapt"]
    assert [n for n, _ in adapted.adapter] == ["roberta.encoder.layer.1.output.LayerNorm.weight"]
    assert {n for n, _ in adapted.head} == {n for n, _ in adapted.model.named_parameters() if n.startswith("classifier.")}
    assert all(p.requires_grad for _, p in adapted.head)
