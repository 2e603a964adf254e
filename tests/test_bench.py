"""The benchmark script runs end to end (--quick) and prints parseable, positive RATIO lines (no timing claims);
the model-step ratio is the median of paired ratios, printed with its spread."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LLAMA = [f"llama_{targets}_fp32_c3a_vs_lora_step_{kind}" for targets in ("qv", "all") for kind in ("time", "cpu_time")]
LLAMA_LAYERS = ["llama_layers_fp32_c3a_vs_lora_time", "llama_layers_fp32_c3a_vs_lora_overhead_time"]
REQUIRED = ["c3a_vs_peft_c3a_time", "c3a_vs_lora_overhead_time", "c3a_vs_lora_peak_memory", "c3a_vs_lora_step_time",
            *LLAMA, *LLAMA_LAYERS]


def _ratios(stdout: str) -> tuple[dict, dict]:
    """The RATIO lines as {name: value} and the SPREAD lines as {name: {min, max, pairs}}."""
    ratios, spreads = {}, {}
    for line in stdout.splitlines():
        if line.startswith("RATIO "):
            _, name, value = line.split()
            ratios[name] = float(value)
        elif line.startswith("SPREAD "):
            _, name, *fields = line.split()
            spreads[name] = {key: float(value) for key, value in (field.split("=") for field in fields)}
    return ratios, spreads


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc")
def test_bench_quick_prints_ratios():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "scripts" / "bench_c3a.py"), "--quick", "--device", "cpu", "--threads", "1",
               "--model-pairs", "3"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios, spreads = _ratios(proc.stdout)
    assert set(REQUIRED) <= set(ratios), proc.stdout[-3000:]
    # an overhead ratio is a difference of two timings over another: on a loaded machine it may come out <= 0
    assert all(value > 0 for name, value in ratios.items() if "overhead" not in name), ratios
    step = spreads["c3a_vs_lora_step_time"]
    assert step["pairs"] == 3
    assert step["min"] <= ratios["c3a_vs_lora_step_time"] <= step["max"], (step, ratios)
    # the per-pair ratios printed are the ones the median came from
    [per_pair] = [line for line in proc.stdout.splitlines() if "ours / lora per pair:" in line]
    values = sorted(float(v) for v in per_pair.split(":")[1].split())
    assert len(values) == 3 and abs(values[1] - ratios["c3a_vs_lora_step_time"]) < 1e-3
    for name in LLAMA:  # the Llama-path ratios: medians of paired steps, with their spread
        assert spreads[name]["pairs"] == 2 and spreads[name]["min"] <= ratios[name] <= spreads[name]["max"], name
    for name in LLAMA_LAYERS:  # the projections alone: one ratio per interleaved round (--quick: 2)
        assert spreads[name]["pairs"] == 2 and spreads[name]["min"] <= ratios[name] <= spreads[name]["max"], name


def test_bf16_model_step_is_full_size_only_where_bf16_is_native(monkeypatch):
    """The bf16 model step runs SmolLM2's full size where bf16 matmuls are in hardware (CUDA, AVX512-BF16, AMX) and
    shrinks only on CPUs that emulate them; the probe answers from the CPU's flags, not from the device name."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_c3a

    assert bench_c3a.has_native_bf16("cuda:0")
    for avx512_bf16, amx, expected in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(bench_c3a.torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(bench_c3a.torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bench_c3a.has_native_bf16("cpu") is expected
    monkeypatch.delattr(bench_c3a.torch.cpu, "_is_avx512_bf16_supported")  # a torch without the private probe
    monkeypatch.delattr(bench_c3a.torch.cpu, "_is_amx_tile_supported")
    assert bench_c3a.has_native_bf16("cpu") is False


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc")
def test_paper_llama_bench_runs_the_table3_presets_in_miniature():
    """scripts/bench_paper_llama.py (made for a GPU) on tiny-llama: the Table 3 presets' adapters on every
    projection, ratios against LoRA r=32 and PEFT's C3A, each the median of its rounds."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "scripts" / "bench_paper_llama.py"), "--device", "cpu", "--model",
               "tiny-llama", "--batch", "2", "--seq", "16", "--rounds", "3", "--layers", "1"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lora={'r': 32, 'lora_alpha': 64, 'lora_dropout': 0.05}" in proc.stdout  # read from the presets
    for name in ("q_proj     256->256 block 128", "down_proj  512->256 block 256"):
        assert name in proc.stdout
    ratios, spreads = _ratios(proc.stdout)
    for part in ("layers", "step"):
        for other in ("lora", "peft_c3a"):
            name = f"tiny_llama_{part}_c3a_vs_{other}_time"
            assert spreads[name]["pairs"] == 3 and spreads[name]["min"] <= ratios[name] <= spreads[name]["max"]
            if part == "step":
                assert ratios[f"tiny_llama_step_c3a_vs_{other}_peak_memory"] > 0


@pytest.mark.parametrize("args, message", [
    (["--model", "smollm2"], "choose from ['llama2-7b', 'llama3-8b', 'tiny-llama']"),
    (["--rounds", "0"], "--rounds=0 must be >= 1"),
])
def test_paper_llama_bench_refuses_bad_input_before_compute(args, message):
    command = [sys.executable, str(ROOT / "scripts" / "bench_paper_llama.py"), "--device", "cpu", *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "projections alone" not in proc.stdout
