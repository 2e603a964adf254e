"""The adapter on every device: a few training steps of a tiny Llama with C3A on q, k, v, up and down, run on the
device, against the same steps in float64 on the CPU (an independent reference: other dtype, other kernels, the
CPU's paths). Each of the adapter's numerics is covered: the merged path and the FFT path in float32, a bf16 model
(FFT path, float32 kernels) and bf16 autocast over a float32 model (merged path). Then merge, unmerge and a
save / load round trip on the device, and activation checkpointing (both torch modes) against none. The CUDA
cases run where a GPU is (`make gpu-check`)."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from c3a import circulant
from c3a.adapter import add_c3a, load_c3a, merge_adapters, save_c3a, unmerge_adapters
from c3a.config import C3AConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
STEPS, LR = 3, 20.0  # plain SGD: Adam would turn tiny gradient differences into whole-step differences
# relative tolerances against float64 of (each loss, the loss's decrease over the steps, each kernel's update):
# float32 sums, or bf16 matmuls and activations (measured on the CPU: 0, 1.9e-5 and ~6.5e-3 on the updates)
TOLERANCES = {"fp32": (1e-5, 1e-3, 1e-4), "bf16": (1e-4, 0.1, 3e-2)}
SETTINGS = {  # name: (base weights' dtype, autocast, path the adapted layers take)
    "fp32-merged": (torch.float32, False, "merged"),
    "fp32-fft": (torch.float32, False, "fft"),
    "bf16-model": (torch.bfloat16, False, "fft"),
    "bf16-autocast": (torch.float32, True, "merged"),
}


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).requires_grad_(False)


def with_c3a(base_dtype: torch.dtype) -> LlamaForCausalLM:
    """The tiny Llama in ``base_dtype`` with float32 kernels (block 16, 32 on up/down), all drawn on the CPU."""
    model = tiny_llama().to(base_dtype)
    torch.manual_seed(1)
    return add_c3a(model, C3AConfig(target_modules=TARGETS, block_size=16, init_weights="xavier_uniform",
                                    block_size_pattern={"up_proj": 32, "down_proj": 32}))


def kernels(model) -> dict:
    return {name: p.detach().to("cpu", torch.float64).clone() for name, p in model.named_parameters()
            if p.requires_grad}


def train(model, device, autocast: bool) -> list[float]:
    """STEPS SGD steps on one fixed batch (labels = the tokens); the losses."""
    model.to(device).train()
    input_ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(2)).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    losses = []
    for _ in range(STEPS):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def relative(got, want) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_training_steps_match_float64_on_the_cpu(setting, device, monkeypatch):
    train_and_compare(setting, device, monkeypatch)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_the_gpus_kernel_gradient_on_the_cpu(setting, monkeypatch):
    """Where the CPU has code of its own, the kernel gradient's numba moments loop (blocks of 32 or more: up and
    down here), a GPU runs the batched matmuls: the same comparison on the CPU with the loop off, so that a failure
    of the CUDA cases above points at the device, not at that path. (The tiny model's weights are below the NumPy
    build's size: its W_eff is torch's build, as on a GPU.)"""
    from c3a import moments

    monkeypatch.setattr(moments, "applies", lambda *args: False)
    train_and_compare(setting, torch.device("cpu"), monkeypatch)


def train_and_compare(setting: str, device: torch.device, monkeypatch) -> None:
    """Train the setting's model on ``device`` and a float64 copy on the CPU; compare losses and kernel updates."""
    base_dtype, autocast, path = SETTINGS[setting]
    chosen = []
    choose = circulant.choose_path
    monkeypatch.setattr(circulant, "choose_path", lambda *a: chosen.append(path) or path)  # each layer's path
    model = with_c3a(base_dtype)
    reference = copy.deepcopy(model).to(torch.float64)  # bf16 base weights are exact in float64
    for kernel in reference.parameters():
        if kernel.requires_grad:  # kernels keep float32 under .to(dtype) (C3ALinear._apply): by hand here
            kernel.data = kernel.data.double()
    start = kernels(model)
    assert set(start) and all(model.get_parameter(n).dtype == torch.float32 for n in start)
    losses = train(model, device, autocast)
    assert len(chosen) == STEPS * 2 * len(TARGETS)  # two decoder layers
    monkeypatch.setattr(circulant, "choose_path", choose)
    reference_losses = train(reference, torch.device("cpu"), autocast=False)
    loss_tol, decrease_tol, update_tol = TOLERANCES["fp32" if base_dtype == torch.float32 and not autocast
                                                    else "bf16"]
    for got, want in zip(losses, reference_losses):
        assert abs(got - want) <= loss_tol * abs(want), (losses, reference_losses)
    decrease, reference_decrease = losses[0] - losses[-1], reference_losses[0] - reference_losses[-1]
    assert reference_decrease > 0 and abs(decrease - reference_decrease) <= decrease_tol * reference_decrease
    end, reference_end = kernels(model), kernels(reference)
    errors = {name: relative(end[name] - start[name], reference_end[name] - start[name]) for name in start}
    assert max(errors.values()) <= update_tol, sorted(errors.items(), key=lambda item: -item[1])[:3]
    assert all(model.get_parameter(n).dtype == torch.float32 and model.get_parameter(n).device.type == device.type
               for n in start)


def test_merge_unmerge_and_save_load_on_the_device(device, tmp_path):
    """After training on the device: merged logits equal the adapter's, unmerging restores it, and a fresh model
    on the device loads the saved kernels to the same logits."""
    model = with_c3a(torch.float32)
    train(model, device, autocast=False)
    model.eval()
    input_ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(5)).to(device)
    with torch.no_grad():
        adapted = model(input_ids=input_ids).logits
        merge_adapters(model)
        merged = model(input_ids=input_ids).logits
        unmerge_adapters(model)
        unmerged = model(input_ids=input_ids).logits
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-4)
    torch.testing.assert_close(unmerged, adapted, rtol=0, atol=1e-5)
    save_c3a(model, tmp_path)
    fresh = load_c3a(tiny_llama().to(device), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=input_ids).logits, adapted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_kernel_gradients(use_reentrant, device):
    """Recomputing the decoder layers in backward (activation checkpointing, either torch mode) leaves every
    kernel's gradient as it is without: q, k and v still share their input's spectra, now those of the
    recomputed input (reentrant: a new graph; non-reentrant: the original nodes, fed recomputed tensors)."""
    input_ids = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(2)).to(device)
    grads = {}
    for checkpointed in (False, True):
        model = with_c3a(torch.float32).to(device).train()
        if checkpointed:
            kwargs = {"use_reentrant": use_reentrant}
            if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        grads[checkpointed] = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and all(g is not None for g in grads[True].values())
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)
