"""Speed and peak memory of our C3A operator vs PEFT's C3A and LoRA r=8, measured side by side in one process.

Layer level: one adapted d x d layer (RoBERTa-base d=768 b=6, RoBERTa-large d=1024 b=8; block 128) at 8k and 32k
tokens, forward + backward, input requiring grad (a mid-network layer), frozen weight:
  frozen    the nn.Linear alone (the floor every method pays)
  lora      peft.get_peft_model(LoraConfig(r=8)) on a one-Linear module
  peft_c3a  peft.get_peft_model(C3AConfig(block_size=128))
  ours      c3a.circulant.c3a_linear with a float32 kernel (scale 1/d_in, as PEFT)
Model level: one training step (forward, backward, AdamW) of RobertaForSequenceClassification(RobertaConfig())
(random weights) at batch 16 x 256 tokens, adapters on query/value: LoRA r=8 (peft) vs ours (b=6).

Timing: warm-up, then the median of several repeats (3 per layer shape; PEFT's C3A, far slower, once); methods
are interleaved round by round so machine noise hits all of them alike. The model step runs in pairs (LoRA then
ours, then ours then LoRA, ...): its ratio is the median of the per-pair ratios, printed with their spread, so
that load from other jobs, which slows both steps of a pair alike, does not flip the verdict.
Peak memory on CPU: peak resident set size (VmHWM after resetting it through /proc/self/clear_refs) minus the
resident size just before the step. malloc is told (mallopt) to return every allocation of 64 KiB or more to the
OS when freed, and free heap pages are returned (malloc_trim) before each step, so RSS follows the live tensors.
It includes everything the step allocates (outputs, saved activations, gradients, transients). On CUDA:
torch.cuda.max_memory_allocated above the start of the step.

Ends with `RATIO <name> <value>` lines, ratio = ours / other (< 1: ours is better), and a
`SPREAD c3a_vs_lora_step_time min=<v> max=<v> pairs=<n>` line for the paired model-step ratio.
Llama path (issue 15): paired training steps of a model with SmolLM2-135M's shapes (random weights; d=576, GQA
k/v 576->192, MLP 1536), batch 8 x 64 tokens, LoRA r=8 vs ours (block 64, 192 on up/down), on q/v and on
q,k,v,up,down, in float32 (30 layers) and under bfloat16 autocast (30 layers where bf16 matmuls are native: CUDA,
a CPU with AVX512-BF16 or AMX; else 4 layers and a 1,024-token vocabulary, as bf16 matmuls crawl there and the LM
head is the same on both sides):
`RATIO llama_<targets>_<dtype>_c3a_vs_lora_step_time` (wall) and `..._step_cpu_time` (CPU seconds), medians of
the per-pair ratios with a SPREAD line each. Before them, each adapted projection alone (fwd+bwd, frozen / LoRA /
ours, in float32 and bfloat16 autocast): `RATIO llama_layers_<dtype>_c3a_vs_lora_time` (one layer's
q,k,v,up,down summed) and `..._overhead_time` (what each adds to the frozen Linear). The Llama part runs first,
before the malloc setting of the memory measurement, which no training run has: with every
allocation of 64 KiB or more mapped afresh, each of C3A's W_eff builds page-faults (issue 15: all projections,
float32, 1.06 with it against 0.99 without, same code). The RoBERTa part times and measures memory in the same
steps, so its times carry that setting (which penalises C3A's transient W_eff: conservative for C3A).
Run: python scripts/bench_c3a.py [--quick] [--model-pairs 5] [--parts llama] [--llama-layers 30]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from c3a.circulant import c3a_linear  # noqa: E402
from framework import allocator  # noqa: E402  (glibc's mallopt, as run.py's allocator policy uses it)

MMAP_THRESHOLD_BYTES = 64 << 10
LAYER_SHAPES = [("roberta-base", 768, 128), ("roberta-large", 1024, 128)]
LAYER_METHODS = ["frozen", "lora", "peft_c3a", "ours"]


class PeakMemory:
    """Peak memory of a code region, in bytes above what was in use when it started (see module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cpu":
            self.libc = allocator.glibc()
            if self.libc.mallopt(allocator.M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
                raise RuntimeError("mallopt(M_MMAP_THRESHOLD) failed: CPU peak memory would be wrong")

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/self/status")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.libc.malloc_trim(0)  # free heap pages (from before the mallopt, e.g. the Llama part) back to the OS
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self.baseline = self._status_kib("VmRSS") * 1024

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.baseline
        return self._status_kib("VmHWM") * 1024 - self.baseline


class Holder(nn.Module):
    """A tiny module with one Linear, so peft can wrap it like a layer of a real model."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


class OursLinear(nn.Module):
    """Frozen nn.Linear plus a float32 block-circulant kernel, calling c3a_linear (scale 1/d_in as PEFT)."""

    def __init__(self, linear: nn.Linear, block_size: int):
        super().__init__()
        self.base = linear
        self.base.requires_grad_(False)
        d_out, d_in = linear.weight.shape
        bound = (6.0 / (d_in + d_out)) ** 0.5  # xavier-uniform over the full layer, like PEFT's default
        kernel = torch.empty(d_out // block_size, d_in // block_size, block_size, device=linear.weight.device)
        self.kernel = nn.Parameter(kernel.uniform_(-bound, bound))
        self.scale = 1.0 / d_in

    def forward(self, x):
        return c3a_linear(x, self.base.weight, self.base.bias, self.kernel, self.scale)


def layer_step(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """One forward + backward of ``module`` on ``x`` (which requires grad), gradients cleared after: a timed step."""

    def step():
        module(x).backward(grad_out)
        x.grad = None
        for param in module.parameters():
            param.grad = None

    return step


def build_layer(method: str, d: int, block_size: int, device) -> nn.Module:
    import peft

    torch.manual_seed(0)
    linear = nn.Linear(d, d, device=device)
    linear.requires_grad_(False)
    if method == "frozen":
        return Holder(linear)
    if method == "ours":
        return Holder(OursLinear(linear, block_size))
    if method == "lora":
        config = peft.LoraConfig(r=8, target_modules=["proj"])
    elif method == "peft_c3a":
        config = peft.C3AConfig(block_size=block_size, target_modules=["proj"], init_weights="xavier_uniform")
    else:
        raise ValueError(method)
    return peft.get_peft_model(Holder(linear), config)


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.1f}"


def fmt_mib(num_bytes: float) -> str:
    return f"{num_bytes / 2 ** 20:9.1f}"


def run_interleaved(steps: dict, memory: PeakMemory, warmup: int, repeats: int, sync, once=()) -> dict:
    """Warm up, then time every step once per round (median over rounds); peak memory on every round too.

    Steps named in `once` (PEFT's C3A: 5-20x slower than the rest, so noise matters less) run only in the
    first timed round, without warm-up, to keep the whole benchmark within a few minutes.
    """
    for _ in range(warmup):
        for name, step in steps.items():
            if name not in once:
                step()
    times = {name: [] for name in steps}
    peaks = {name: [] for name in steps}
    for round_index in range(repeats):
        for name, step in steps.items():
            if name in once and round_index > 0:
                continue
            memory.start()
            sync()
            begin = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - begin)
            peaks[name].append(memory.stop())
    return {name: (statistics.median(times[name]), statistics.median(peaks[name]), times[name]) for name in steps}


def bench_layers(token_shapes, device, memory, warmup, repeats, sync) -> dict:
    results = {}
    for model_name, d, block_size in LAYER_SHAPES:
        for batch, seq in token_shapes:
            gen = torch.Generator(device=device).manual_seed(1)
            x = torch.randn(batch, seq, d, device=device, generator=gen).requires_grad_()
            grad_out = torch.randn(batch, seq, d, device=device, generator=gen)
            steps = {}
            for method in LAYER_METHODS:
                steps[method] = layer_step(build_layer(method, d, block_size, device), x, grad_out)
            key = (model_name, batch * seq)
            results[key] = run_interleaved(steps, memory, warmup, repeats, sync, once=("peft_c3a",))
            row = results[key]
            print(f"\n{model_name} d={d} block={block_size} tokens={batch}x{seq}={batch * seq}")
            print(f"  {'method':<10}{'fwd+bwd ms':>12}{'overhead ms':>13}{'peak MiB':>11}   all ms")
            for method in LAYER_METHODS:
                t, peak, all_t = row[method]
                over = t - row["frozen"][0]
                print(f"  {method:<10}{fmt_ms(t):>12}{fmt_ms(over):>13}{fmt_mib(peak):>11}   "
                      + " ".join(f"{s * 1e3:.0f}" for s in all_t), flush=True)
    return results


def build_roberta(method: str, num_layers: int, device):
    import peft
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(num_hidden_layers=num_layers)).to(device)
    if method == "lora":
        config = peft.LoraConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS")
        return peft.get_peft_model(model, config)
    model.requires_grad_(False)
    for layer in model.roberta.encoder.layer:
        attention = layer.attention.self
        attention.query = OursLinear(attention.query, block_size=128)
        attention.value = OursLinear(attention.value, block_size=128)
    model.classifier.requires_grad_(True)
    return model


def bench_model(batch, seq, num_layers, device, memory, pairs, sync) -> dict:
    """One training step of each model: a warm-up each, then `pairs` timed pairs in alternating order."""
    gen = torch.Generator(device=device).manual_seed(2)
    input_ids = torch.randint(0, 50265, (batch, seq), device=device, generator=gen)
    labels = torch.randint(0, 2, (batch,), device=device, generator=gen)
    steps = {}
    for method in ("lora", "ours"):
        model = build_roberta(method, num_layers, device)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)

        def step(model=model, optimizer=optimizer):
            model(input_ids=input_ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[method] = step
        print(f"  {method}: {sum(p.numel() for p in trainable)} trainable parameters", flush=True)
    for step in steps.values():
        step()
    times, peaks = {name: [] for name in steps}, {name: [] for name in steps}
    for pair in range(pairs):
        for name in (("lora", "ours") if pair % 2 == 0 else ("ours", "lora")):
            memory.start()
            sync()
            begin = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - begin)
            peaks[name].append(memory.stop())
    ratios = [ours / lora for ours, lora in zip(times["ours"], times["lora"])]
    print(f"\nRoBERTa-base-shaped training step ({num_layers} layers), batch {batch}x{seq}, adapters on query/value, "
          f"{pairs} pairs")
    print(f"  {'method':<10}{'step ms':>12}{'peak MiB':>11}   all ms (pair by pair)")
    for name in steps:
        step_ms, peak_mib = fmt_ms(statistics.median(times[name])), fmt_mib(statistics.median(peaks[name]))
        print(f"  {name:<10}{step_ms:>12}{peak_mib:>11}   " + " ".join(f"{s * 1e3:.0f}" for s in times[name]))
    print("  ours / lora per pair: " + " ".join(f"{r:.3f}" for r in ratios))
    return {"ratios": ratios, "peak": {name: statistics.median(values) for name, values in peaks.items()}}


# SmolLM2-135M's adapted projections: (d_in, d_out, C3A block size), as build_llama adapts them
LLAMA_PROJECTIONS = {"q_proj": (576, 576, 64), "k_proj": (576, 192, 64), "v_proj": (576, 192, 64),
                     "up_proj": (576, 1536, 192), "down_proj": (1536, 576, 192)}


def bench_llama_layers(dtype: str, rounds: int, device, sync) -> dict:
    """Forward + backward of each adapted projection of one decoder layer alone (8 x 64 tokens, input requiring
    grad): the frozen Linear, LoRA r=8 (PEFT) and ours (c3a.add_c3a), interleaved round by round. Where a
    model step's difference comes from, without attention, norms and the LM head around it."""
    import peft

    from c3a import C3AConfig, add_c3a

    per_round = {m: [0.0] * rounds for m in ("frozen", "lora", "ours")}
    print(f"\nLlama projections alone (SmolLM2 shapes), fwd+bwd, 8 x 64 tokens, {dtype}, {rounds} rounds: median ms")
    for name, (d_in, d_out, block_size) in LLAMA_PROJECTIONS.items():
        gen = torch.Generator(device=device).manual_seed(4)
        x = torch.randn(8, 64, d_in, device=device, generator=gen).requires_grad_()
        grad_out = torch.randn(8, 64, d_out, device=device, generator=gen)
        steps = {}
        for method in per_round:
            torch.manual_seed(0)
            module = Holder(nn.Linear(d_in, d_out, bias=False, device=device)).requires_grad_(False)
            if method == "lora":
                module = peft.get_peft_model(module, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["proj"]))
            elif method == "ours":
                add_c3a(module, C3AConfig(target_modules=["proj"], block_size=block_size))

            def step(module=module):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    out = module(x)
                out.backward(grad_out.to(out.dtype))
                x.grad = None
                for param in module.parameters():
                    param.grad = None

            steps[method] = step
        for step in steps.values():
            step()
        times = {m: [] for m in steps}
        for round_index in range(rounds):
            for method in (list(steps) if round_index % 2 == 0 else list(steps)[::-1]):
                sync()
                begin = time.perf_counter()
                steps[method]()
                sync()
                times[method].append(time.perf_counter() - begin)
                per_round[method][round_index] += times[method][-1]
        print(f"  {name:<10}" + "".join(f"{m} {fmt_ms(statistics.median(t))}  " for m, t in times.items()), flush=True)
    ratios = [o / l for o, l in zip(per_round["ours"], per_round["lora"])]
    overheads = [(o - f) / (l - f) for o, l, f in zip(per_round["ours"], per_round["lora"], per_round["frozen"])]
    print("  one layer's projections, ours / lora per round: " + " ".join(f"{r:.3f}" for r in ratios))
    return {f"llama_layers_{dtype}_c3a_vs_lora_time": ratios,
            f"llama_layers_{dtype}_c3a_vs_lora_overhead_time": overheads}


LLAMA_TARGETS = {"qv": ["q_proj", "v_proj"], "all": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]}


def build_llama(method: str, targets: list[str], num_layers: int, device, vocab_size: int = 49152):
    """SmolLM2-135M's shapes (d=576, 9 heads / 3 KV heads: k/v 576->192, MLP 1536), random weights, frozen;
    LoRA r=8 (alpha 16, no dropout, PEFT) or ours via c3a.add_c3a (block 64; 192 on up/down)."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    from c3a import C3AConfig, add_c3a

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=576, intermediate_size=1536, num_hidden_layers=num_layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(device)
    model.requires_grad_(False)
    if method == "lora":
        return peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    return add_c3a(model, C3AConfig(target_modules=targets, block_size=64,
                                    block_size_pattern={"up_proj": 192, "down_proj": 192}))


def bench_llama(targets_name: str, dtype: str, num_layers: int, pairs: int, device, sync,
                vocab_size: int = 49152) -> dict:
    """Paired training steps (LoRA, ours; then ours, LoRA; ...) on one batch of 8 x 64 random tokens (labels = the
    tokens), float32 or bfloat16 autocast (the kernels and LoRA's weights stay float32). Ratios per pair: wall
    time, and CPU time (process_time: on a machine shared with other jobs the steadier measure of work done)."""
    gen = torch.Generator(device=device).manual_seed(3)
    input_ids = torch.randint(0, vocab_size, (8, 64), device=device, generator=gen)
    steps = {}
    for method in ("lora", "ours"):
        model = build_llama(method, LLAMA_TARGETS[targets_name], num_layers, device, vocab_size)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)

        def step(model=model, optimizer=optimizer):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[method] = step
    for step in steps.values():
        step()
    wall, cpu = {name: [] for name in steps}, {name: [] for name in steps}
    for pair in range(pairs):
        for name in (("lora", "ours") if pair % 2 == 0 else ("ours", "lora")):
            sync()
            begin, cpu_begin = time.perf_counter(), time.process_time()
            steps[name]()
            sync()
            wall[name].append(time.perf_counter() - begin)
            cpu[name].append(time.process_time() - cpu_begin)
    ratios = {"wall": [o / l for o, l in zip(wall["ours"], wall["lora"])],
              "cpu": [o / l for o, l in zip(cpu["ours"], cpu["lora"])]}
    print(f"\nLlama (SmolLM2-135M shapes, {num_layers} layers, vocabulary {vocab_size}) training step, 8 x 64 tokens, "
          f"{dtype}, targets {','.join(LLAMA_TARGETS[targets_name])}, {pairs} pairs")
    for name in steps:
        print(f"  {name:<6} wall ms " + " ".join(f"{s * 1e3:.0f}" for s in wall[name])
              + "   cpu ms " + " ".join(f"{s * 1e3:.0f}" for s in cpu[name]))
    for kind, values in ratios.items():
        print(f"  ours / lora per pair ({kind}): " + " ".join(f"{r:.3f}" for r in values), flush=True)
    return ratios


def has_native_bf16(device: str) -> bool:
    """bf16 matmuls in hardware: any CUDA device here, or a CPU with AVX512-BF16 or AMX (AVX2-only CPUs emulate
    them, some 10x slower than float32, which is why the bf16 model step shrinks there)."""
    if device.startswith("cuda"):
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu probes (2.1+)
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small token counts and model (a smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-layers", type=int, default=12, help="encoder layers of the model-level step")
    parser.add_argument("--model-pairs", type=int, default=5,
                        help="timed (LoRA, ours) pairs of the model step; its ratio is the median over pairs")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the CPUs this process may use)")
    parser.add_argument("--parts", default="roberta,llama", help="roberta, llama or both (comma-separated)")
    parser.add_argument("--llama-pairs", type=int, default=5, help="timed (LoRA, ours) pairs per Llama setting")
    parser.add_argument("--llama-layers", type=int, default=30, help="decoder layers, float32 (SmolLM2: 30)")
    parser.add_argument("--llama-rounds", type=int, default=10,
                        help="interleaved rounds of the projections-alone Llama timing (float32 and bfloat16)")
    parser.add_argument("--llama-bf16-layers", type=int, default=None,
                        help="decoder layers of the model step under bfloat16 autocast (0: skip it); default 30 "
                             "(SmolLM2's) where bf16 matmuls are native (CUDA, a CPU with AVX512-BF16 or AMX), else 4")
    parser.add_argument("--llama-bf16-vocab", type=int, default=None,
                        help="vocabulary of that bf16 model (its LM head is the same on both sides); default 49152 "
                             "(SmolLM2's) where bf16 matmuls are native, else 1024: without bf16 units they crawl, "
                             "and SmolLM2's head alone takes about a minute a step on an AVX2-only CPU")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or parts - {"roberta", "llama"}:
        parser.error(f"--parts={args.parts!r}: choose from roberta, llama (comma-separated)")
    if args.model_pairs < 1:
        parser.error(f"--model-pairs={args.model_pairs} must be >= 1")
    native_bf16 = has_native_bf16(args.device)
    if args.llama_bf16_layers is None:
        args.llama_bf16_layers = 30 if native_bf16 else 4
    if args.llama_bf16_vocab is None:
        args.llama_bf16_vocab = 49152 if native_bf16 else 1024
    if args.llama_rounds < 1 or args.llama_bf16_layers < 0 or args.llama_bf16_vocab < 2:
        parser.error(f"--llama-rounds={args.llama_rounds} must be >= 1, --llama-bf16-layers="
                     f"{args.llama_bf16_layers} >= 0 and --llama-bf16-vocab={args.llama_bf16_vocab} >= 2")

    device = torch.device(args.device)
    threads = args.threads
    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.quick:
        token_shapes, layer_warmup, layer_repeats = [(2, 256)], 1, 3
        model_shape, model_layers, model_pairs = (2, 64), 2, min(args.model_pairs, 3)
    else:
        token_shapes, layer_warmup, layer_repeats = [(32, 256), (128, 256)], 1, 3
        model_shape, model_layers, model_pairs = (16, 256), args.model_layers, args.model_pairs
    import numba
    import peft
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    print(f"device={device} threads={threads} cpu={cpu} capability={torch.backends.cpu.get_cpu_capability()} "
          f"native_bf16={native_bf16} wait_policy={os.environ.get('OMP_WAIT_POLICY', 'unset')} "
          f"torch={torch.__version__} peft={peft.__version__} transformers={transformers.__version__} "
          f"numba={numba.__version__}")
    print("peak memory: " + ("torch.cuda.max_memory_allocated above the start" if device.type == "cuda" else
                             "peak RSS (VmHWM) above the RSS at the start of the step"))
    begin = time.perf_counter()
    ratios, spreads = {}, {}
    if "llama" in parts:
        for dtype in ("fp32",) if args.quick else ("fp32", "bf16"):
            for name, values in bench_llama_layers(dtype, 2 if args.quick else args.llama_rounds, device, sync).items():
                ratios[name], spreads[name] = statistics.median(values), values
        # (dtype, decoder layers, vocabulary); --quick: float32 only (bfloat16 matmuls crawl on most CPUs)
        full = [("fp32", args.llama_layers, 49152)] + (
            [("bf16", args.llama_bf16_layers, args.llama_bf16_vocab)] if args.llama_bf16_layers else [])
        settings = [("fp32", 2, 1024)] if args.quick else full
        pairs = min(args.llama_pairs, 2) if args.quick else args.llama_pairs
        for dtype, num_layers, vocab_size in settings:
            for targets_name in LLAMA_TARGETS:
                got = bench_llama(targets_name, dtype, num_layers, pairs, device, sync, vocab_size=vocab_size)
                for kind, values in got.items():
                    name = f"llama_{targets_name}_{dtype}_c3a_vs_lora_step_{'time' if kind == 'wall' else 'cpu_time'}"
                    ratios[name] = statistics.median(values)
                    spreads[name] = values
    if "roberta" not in parts:
        print(f"\ntotal benchmark time {time.perf_counter() - begin:.0f} s\n")
        _print_ratios(ratios, spreads)
        return
    memory = PeakMemory(device)  # after the Llama part: its malloc setting is not what training runs with
    layers = bench_layers(token_shapes, device, memory, layer_warmup, layer_repeats, sync)
    model = bench_model(*model_shape, model_layers, device, memory, model_pairs, sync)
    print(f"\ntotal benchmark time {time.perf_counter() - begin:.0f} s")

    for (model_name, tokens), row in layers.items():
        t = {m: row[m][0] for m in LAYER_METHODS}
        peak = {m: row[m][1] for m in LAYER_METHODS}
        tag = f"{model_name}_{tokens}"
        ratios[f"{tag}_c3a_vs_peft_c3a_time"] = t["ours"] / t["peft_c3a"]
        ratios[f"{tag}_c3a_vs_lora_overhead_time"] = (t["ours"] - t["frozen"]) / (t["lora"] - t["frozen"])
        ratios[f"{tag}_c3a_vs_lora_peak_memory"] = peak["ours"] / peak["lora"]
        ratios[f"{tag}_c3a_vs_peft_c3a_peak_memory"] = peak["ours"] / peak["peft_c3a"]
    keys = list(layers)
    # headline ratios: geometric mean over the layer shapes (a ratio of medians per shape)
    for name in ("c3a_vs_peft_c3a_time", "c3a_vs_lora_overhead_time", "c3a_vs_lora_peak_memory"):
        values = [ratios[f"{m}_{n}_{name}"] for m, n in keys]
        ratios[name] = statistics.geometric_mean(values) if all(v > 0 for v in values) else statistics.mean(values)
    ratios["c3a_vs_lora_step_time"] = statistics.median(model["ratios"])
    ratios["c3a_vs_lora_step_peak_memory"] = model["peak"]["ours"] / model["peak"]["lora"]
    spreads["c3a_vs_lora_step_time"] = model["ratios"]
    print()
    _print_ratios(ratios, spreads)


def _print_ratios(ratios: dict, spreads: dict) -> None:
    for name, value in ratios.items():
        print(f"RATIO {name} {value:.4f}")
    for name, values in spreads.items():
        print(f"SPREAD {name} min={min(values):.4f} max={max(values):.4f} pairs={len(values)}")


if __name__ == "__main__":
    main()
