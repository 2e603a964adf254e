"""Our C3A against PEFT 0.21's C3A: same kernels give the same logits and kernel gradients, and
adapters move between the two checkpoint formats with unchanged outputs."""
import json

import peft
import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

from c3a.config import C3AConfig
from c3a.adapter import active_adapters, add_c3a, c3a_layers
from c3a.peft_conversion import config_from_peft, export_peft_c3a, load_peft_c3a

QV = ["query", "value"]
HEAD = ["classifier"]


def tiny_roberta(seed=0):
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=40, num_labels=3)
    return RobertaForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 100, (4, 12), generator=g), torch.tensor([0, 1, 2, 1])


def peft_kernels(peft_model):
    """PEFT kernel per layer name (PEFT's parameter names carry a wrapper prefix and the adapter)."""
    found = {}
    for name, param in peft_model.named_parameters():
        if ".c3a_kernel." in name:
            layer = name.split(".c3a_kernel.")[0].removeprefix("base_model.model.")
            found[layer] = param
    return found


def test_same_kernels_give_same_logits_and_kernel_gradients(batch):
    inputs, labels = batch
    theirs = peft.get_peft_model(tiny_roberta(), peft.C3AConfig(block_size=16, target_modules=QV,
                                                                init_weights="gaussian"))
    ours = add_c3a(tiny_roberta(), C3AConfig(target_modules=QV, block_size=16), exclude_modules=HEAD)
    their_kernels = peft_kernels(theirs)
    our_layers = c3a_layers(ours)
    assert set(their_kernels) == set(our_layers) and len(our_layers) == 4
    with torch.no_grad():
        for name, layer in our_layers.items():
            layer.c3a_kernel["default"].copy_(their_kernels[name])
    loss_theirs = theirs(input_ids=inputs, labels=labels)
    loss_ours = ours(input_ids=inputs, labels=labels)
    torch.testing.assert_close(loss_ours.logits, loss_theirs.logits, atol=1e-5, rtol=1e-5)
    loss_theirs.loss.backward()
    loss_ours.loss.backward()
    for name, layer in our_layers.items():
        grad = layer.c3a_kernel["default"].grad
        assert grad is not None and grad.abs().max() > 0
        torch.testing.assert_close(grad, their_kernels[name].grad, atol=1e-5, rtol=1e-4)


def test_adapter_saved_by_peft_loads_with_identical_outputs(tmp_path, batch):
    inputs, _ = batch
    theirs = peft.get_peft_model(
        tiny_roberta(), peft.C3AConfig(block_size=16, target_modules=QV, task_type="SEQ_CLS",
                                       block_size_pattern={"value": 8}, init_weights="gaussian"))
    with torch.no_grad():  # a trained head lives in PEFT's modules_to_save copy
        for name, param in theirs.named_parameters():
            if ".modules_to_save." in name:
                param.add_(0.5 * torch.randn_like(param))
        expected = theirs(input_ids=inputs).logits
    theirs.save_pretrained(tmp_path)
    ours = load_peft_c3a(tiny_roberta(), tmp_path)
    sizes = {n.rsplit(".", 1)[1]: m.block_size["default"] for n, m in c3a_layers(ours).items()}
    assert sizes == {"query": 16, "value": 8} and active_adapters(ours) == ["default"]
    with torch.no_grad():
        got = ours(input_ids=inputs).logits
    assert (got - tiny_roberta()(input_ids=inputs).logits).abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_our_adapter_exports_to_peft(tmp_path, batch):
    inputs, _ = batch
    ours = add_c3a(tiny_roberta(), C3AConfig(target_modules=QV, block_size=16, init_weights="gaussian",
                                             block_size_pattern={"value": 32}), exclude_modules=HEAD)
    with torch.no_grad():
        ours.classifier.out_proj.bias.add_(1.0)
        expected = ours(input_ids=inputs).logits
    export_peft_c3a(ours, tmp_path, modules_to_save=HEAD, task_type="SEQ_CLS")
    theirs = peft.PeftModel.from_pretrained(tiny_roberta(), tmp_path)
    sizes = {n.rsplit(".", 1)[1]: k.shape[-1] for n, k in peft_kernels(theirs).items()}
    assert sizes == {"query": 16, "value": 32}
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=inputs).logits, expected, atol=1e-5, rtol=1e-5)


def test_unscaled_adapter_cannot_be_exported_and_foreign_configs_are_rejected(tmp_path):
    ours = add_c3a(tiny_roberta(), C3AConfig(target_modules=QV, b=1, scale_by_d_in=False))
    with pytest.raises(ValueError, match="scale_by_d_in"):
        export_peft_c3a(ours, tmp_path)
    with pytest.raises(ValueError, match="not a PEFT C3A"):
        config_from_peft({"peft_type": "LORA"})
    cfg = config_from_peft(json.loads(json.dumps({"peft_type": "C3A", "block_size": 64, "init_weights": True,
                                                  "target_modules": ["query"]})))
    assert cfg.block_size == 64 and cfg.init_weights == "zeros" and cfg.scale_by_d_in
