"""LLaMA at the paper's Table 3 protocol: time and peak memory of our C3A against LoRA r=32 and PEFT's C3A.

Made for a CUDA device (`make gpu-check`). On a CPU (`make bench`) the defaults shrink to batch 2 x 256, one
decoder layer and 5 rounds (about a minute), and `--model tiny-llama --batch 2 --seq 16` runs in seconds (tests).
Shapes and settings come from the project's configs, not from this file:
- the model: `conf/model/<--model>.yaml`'s architecture (default llama2-7b: d=4096, MLP 11008, 32 heads), with
  --layers of its decoder layers (default 2) and its whole vocabulary. Random weights in bfloat16, as Table 3
  loads the model (no autocast), so our adapter takes its FFT path (a bf16 weight is never merged);
- the adapters: the Table 3 presets `conf/experiment/table3/llama{2,3}_{c3a,lora}.yaml`. Ours: block 128 on q, k, v
  and 256 on up, down. LoRA: r=32, alpha 64, dropout 0.05 (PEFT). PEFT's C3A: the same blocks. Targets: q, k, v,
  up, down (Table 3's: `targets.instruct` of conf/model/llama2-7b.yaml). Kernels and LoRA weights are float32
  (PEFT upcasts its adapters; ours are float32 by design);
- the batch: 16 x 256 random tokens on CUDA (Commonsense170K's batch; Table 3's memory column used it).

Parts, each timed in rotating order, so that drift and the step after another model's hit every method alike:
- projections alone: each adapted projection's forward + backward (input requiring grad, as mid-network) at the
  batch's tokens: frozen / LoRA / PEFT's C3A / ours. `RATIO <model>_layers_c3a_vs_{lora,peft_c3a}_time` sum one
  layer's five projections per round; `..._c3a_vs_lora_overhead_time` compares what each adds to the frozen Linear;
- training step: forward, backward and AdamW of the model. `RATIO <model>_step_c3a_vs_{lora,peft_c3a}_time`
  (median of per-round ratios, with SPREAD lines) and `..._peak_memory` (median of three more steps each).
Run: python scripts/bench_paper_llama.py [--layers 2] [--rounds 10] [--model llama2-7b]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from bench_c3a import Holder, PeakMemory, _print_ratios, fmt_mib, fmt_ms, layer_step  # noqa: E402

METHODS = ("frozen", "lora", "peft_c3a", "ours")
MEMORY_ROUNDS = 3  # peak memory: the median of three steps each, rotating (a CPU's RSS peak varies step to step)
PROTOCOL = ROOT / "conf" / "experiment" / "table3"


def read_yaml(path: Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def llama_entries() -> list[str]:
    """The conf/model entries this benchmark can build: Llama architectures."""
    return sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml")
                  if "hidden_size" in (read_yaml(path).get("architecture") or {})
                  and "llama" in path.stem)


def projection_shapes(arch: dict) -> dict:
    """(d_in, d_out) of each projection the presets adapt."""
    d, mlp = arch["hidden_size"], arch["intermediate_size"]
    kv = d // arch["num_attention_heads"] * arch.get("num_key_value_heads", arch["num_attention_heads"])
    return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "up_proj": (d, mlp), "down_proj": (mlp, d)}


def protocol(model_name: str) -> dict:
    """The model's architecture and the Table 3 presets' adapter settings, read from conf/; refused before any
    compute if the entry is unknown or the presets' block sizes do not divide its projections."""
    choices = llama_entries()
    if model_name not in choices:
        raise SystemExit(f"--model={model_name!r} is not a Llama entry of conf/model with an architecture block; "
                         f"choose from {choices}")
    model = read_yaml(ROOT / "conf" / "model" / f"{model_name}.yaml")
    presets = "llama3" if model_name.startswith("llama3") else "llama2"  # tiny-llama: LLaMA2-7B's presets
    c3a = read_yaml(PROTOCOL / f"{presets}_c3a.yaml")["method"]
    lora = read_yaml(PROTOCOL / f"{presets}_lora.yaml")["method"]
    targets = read_yaml(ROOT / "conf" / "model" / "llama2-7b.yaml")["targets"]["instruct"]
    settings = {"architecture": {k: v for k, v in model["architecture"].items() if k != "model_type"},
                "block_size": c3a["block_size"], "block_size_pattern": dict(c3a["block_size_pattern"]),
                "lora": {k: lora[k] for k in ("r", "lora_alpha", "lora_dropout")}, "targets": list(targets)}
    shapes = projection_shapes(settings["architecture"])
    for name in targets:
        block = block_size_of(name, settings)
        if any(size % block for size in shapes[name]):
            raise SystemExit(f"--model={model_name}: the Table 3 presets' block {block} does not divide {name} "
                             f"{shapes[name][0]}->{shapes[name][1]}; choose a model whose projections it divides")
    return settings


def block_size_of(name: str, settings: dict) -> int:
    return settings["block_size_pattern"].get(name, settings["block_size"])


def adapt(model: nn.Module, method: str, targets: list[str], settings: dict) -> nn.Module:
    """``model`` (frozen) with ``method``'s adapters on ``targets``."""
    import peft

    from c3a import C3AConfig, add_c3a

    pattern = {name: block_size_of(name, settings) for name in targets}
    if method == "frozen":
        return model
    if method == "ours":
        return add_c3a(model, C3AConfig(target_modules=targets, block_size=settings["block_size"],
                                        block_size_pattern=pattern))
    if method == "lora":
        return peft.get_peft_model(model, peft.LoraConfig(target_modules=targets, **settings["lora"]))
    return peft.get_peft_model(model, peft.C3AConfig(target_modules=targets, block_size=settings["block_size"],
                                                     block_size_pattern=pattern, init_weights="xavier_uniform"))


def rotated(names, round_index: int) -> list:
    names = list(names)
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def time_rounds(steps: dict, rounds: int, sync) -> dict:
    """One warm-up step each, then ``rounds`` rounds in rotating order: seconds per method per round."""
    for step in steps.values():
        step()
    times = {name: [0.0] * rounds for name in steps}
    for round_index in range(rounds):
        for name in rotated(steps, round_index):
            sync()
            begin = time.perf_counter()
            steps[name]()
            sync()
            times[name][round_index] = time.perf_counter() - begin
    return times


def bench_projections(settings: dict, tokens: int, rounds: int, device, sync) -> dict:
    """Per round, one decoder layer's five projections summed, per method."""
    shapes = projection_shapes(settings["architecture"])
    per_round = {m: [0.0] * rounds for m in METHODS}
    print(f"\nprojections alone, forward + backward, {tokens} tokens, bf16 weights: median ms over {rounds} rounds")
    for name in settings["targets"]:
        d_in, d_out = shapes[name]
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(tokens, d_in, device=device, generator=gen, dtype=torch.bfloat16).requires_grad_()
        grad_out = torch.randn(tokens, d_out, device=device, generator=gen, dtype=torch.bfloat16)
        steps = {}
        for method in METHODS:
            torch.manual_seed(0)
            holder = Holder(nn.Linear(d_in, d_out, bias=False, device=device, dtype=torch.bfloat16))
            module = adapt(holder.requires_grad_(False), method, ["proj"],
                           dict(settings, block_size=block_size_of(name, settings), block_size_pattern={}))
            steps[method] = layer_step(module, x, grad_out)
        times = time_rounds(steps, rounds, sync)
        for method in METHODS:
            per_round[method] = [a + b for a, b in zip(per_round[method], times[method])]
        print(f"  {name:<10} {d_in}->{d_out} block {block_size_of(name, settings)}  "
              + "  ".join(f"{m} {fmt_ms(statistics.median(times[m]))}" for m in METHODS), flush=True)
    return per_round


def build_model(settings: dict, layers: int, method: str, device) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(**dict(settings["architecture"], num_hidden_layers=layers))
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return adapt(model.requires_grad_(False), method, settings["targets"], settings)


def bench_step(settings: dict, layers: int, batch: int, seq: int, rounds: int, device, sync) -> tuple[dict, dict]:
    """Training steps of one model per method (LoRA, PEFT's C3A, ours), in rotating order; then their peak memory,
    the median of MEMORY_ROUNDS more steps each."""
    vocab = settings["architecture"]["vocab_size"]
    input_ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(3)).to(device)
    steps = {}
    for method in METHODS[1:]:
        model = build_model(settings, layers, method, device).train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(model=model, optimizer=optimizer):
            model(input_ids=input_ids, labels=input_ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[method] = step
    times = time_rounds(steps, rounds, sync)
    memory = PeakMemory(device)  # after the timing: its malloc setting (CPU) is not what training runs with
    measured = {method: [] for method in steps}
    for round_index in range(MEMORY_ROUNDS):
        for method in rotated(steps, round_index):
            memory.start()
            steps[method]()
            measured[method].append(memory.stop())
    peaks = {method: statistics.median(values) for method, values in measured.items()}
    print(f"\ntraining step, {layers} of {settings['architecture']['num_hidden_layers']} decoder layers, "
          f"{batch} x {seq} tokens, bf16 model, {rounds} rounds")
    for method in steps:
        print(f"  {method:<9} ms " + " ".join(f"{s * 1e3:.0f}" for s in times[method])
              + f"   peak MiB {fmt_mib(peaks[method]).strip()} (" + " ".join(
                  fmt_mib(value).strip() for value in measured[method]) + ")", flush=True)
    return times, peaks


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="llama2-7b", help="a conf/model entry with an architecture block")
    parser.add_argument("--layers", type=int, default=None,
                        help="decoder layers of the training step (0: skip it); default 2 on CUDA, 1 on a CPU")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step; default 16 on CUDA (Table 3's), "
                                                                 "2 on a CPU (a 16 x 256 step of one 7B layer takes "
                                                                 "about 10 s there)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per part; default 10 on CUDA, 5 on a CPU")
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    for name, cuda_default, cpu_default in (("layers", 2, 1), ("batch", 16, 2), ("rounds", 10, 5)):
        if getattr(args, name) is None:
            setattr(args, name, cuda_default if on_cuda else cpu_default)
    for name in ("batch", "seq", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} must be >= 1")
    if args.layers < 0:
        parser.error(f"--layers={args.layers} must be >= 0")
    settings = protocol(args.model)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    import peft
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device={device} ({name}) model={args.model} torch={torch.__version__} peft={peft.__version__} "
          f"transformers={transformers.__version__} blocks={settings['block_size']}/{settings['block_size_pattern']} "
          f"lora={settings['lora']}")
    print(f"sizes: batch {args.batch} x {args.seq} tokens, {args.layers} decoder layers, {args.rounds} rounds")
    begin = time.perf_counter()
    prefix = args.model.replace("-", "_")
    ratios, spreads = {}, {}
    per_round = bench_projections(settings, args.batch * args.seq, args.rounds, device, sync)
    for other in ("lora", "peft_c3a"):
        values = [o / b for o, b in zip(per_round["ours"], per_round[other])]
        ratios[f"{prefix}_layers_c3a_vs_{other}_time"], spreads[f"{prefix}_layers_c3a_vs_{other}_time"] = (
            statistics.median(values), values)
    frozen = statistics.median(per_round["frozen"])
    ratios[f"{prefix}_layers_c3a_vs_lora_overhead_time"] = (
        (statistics.median(per_round["ours"]) - frozen) / (statistics.median(per_round["lora"]) - frozen))
    if args.layers:
        times, peaks = bench_step(settings, args.layers, args.batch, args.seq, args.rounds, device, sync)
        for other in ("lora", "peft_c3a"):
            values = [o / b for o, b in zip(times["ours"], times[other])]
            ratios[f"{prefix}_step_c3a_vs_{other}_time"] = statistics.median(values)
            spreads[f"{prefix}_step_c3a_vs_{other}_time"] = values
            ratios[f"{prefix}_step_c3a_vs_{other}_peak_memory"] = peaks["ours"] / peaks[other]
    print(f"\ntotal benchmark time {time.perf_counter() - begin:.0f} s\n")
    _print_ratios(ratios, spreads)


if __name__ == "__main__":
    main()
