#!/usr/bin/env bash
# The checks that need a CUDA device, in one run (a lent GPU's minutes are few, and each start costs minutes):
#   1. pytest_cuda: the adapter's numerics on the GPU (`pytest -m cuda`): both paths against float64 dense
#      references, a bf16 model, autocast, chunks, shared inputs; a tiny Llama's training steps on the GPU against
#      the same steps in float64 on the CPU; merge, unmerge, save and load there;
#   2. bench_paper_llama: LLaMA2-7B decoder layers at Table 3's protocol (bf16 model, 16 x 256 tokens): ours vs
#      LoRA r=32 vs PEFT's C3A, projections alone and the training step, time and peak memory;
#   3. bench_c3a_llama: `make bench`'s Llama part (SmolLM2's shapes, issue 15's ratios), on the GPU;
#   4. bench_c3a_roberta: `make bench`'s RoBERTa part (layers at 8k/32k tokens, the model step, memory).
# Each step runs under its own time limit, also when one before it failed; the exit status is 0 only if all
# passed. Outputs: OUT/<step>.txt and OUT/device.txt (GPU, driver, versions); the RATIO lines are echoed.
# Needs python3 with torch (CUDA), transformers, peft, numba, pyyaml and pytest (no hydra, datasets or wandb).
# Usage: scripts/gpu_check.sh [OUT]   (default results/bench/gpu-<date>; `make gpu-check OUT=…`)
# Next, if the GPU's time allows: Table 2's memory column, `python3 scripts/measure_memory.py --device cuda`
# (16 rows, one subprocess each). It composes rows as run.py does, so it also needs hydra-core 1.3.8,
# omegaconf 2.3.1 and antlr4-python3-runtime 4.9.3 (pure-Python wheels; nothing else beyond the list above).
set -u
cd "$(dirname "$0")/.."
out="${1:-results/bench/gpu-$(date +%Y-%m-%d)}"
python="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$out"
"$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device')" \
  || exit 2
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$python" -c "import torch, transformers, peft, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'numba', numba.__version__)" 2>&1
  git rev-parse HEAD 2>/dev/null
} >"$out/device.txt"
cat "$out/device.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: run it under a time limit into OUT/NAME.txt
  local name=$1 limit=$2 begin=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  rc=$?
  grep -E '^(RATIO|SPREAD) |passed|failed|error' "$out/$name.txt" | tail -40
  echo "== $name: exit $rc after $((SECONDS - begin)) s"
  [ "$rc" -eq 0 ] || status=1
}
step pytest_cuda 150 "$python" -m pytest -q -m cuda -p no:cacheprovider tests/test_circulant.py tests/test_devices.py
step bench_paper_llama 200 "$python" scripts/bench_paper_llama.py
step bench_c3a_llama 120 "$python" scripts/bench_c3a.py --parts llama --llama-pairs 10
step bench_c3a_roberta 120 "$python" scripts/bench_c3a.py --parts roberta
exit "$status"
