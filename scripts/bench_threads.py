"""Two training runs at once on one machine (or one alone): step time with torch's default threads vs
framework/threads.py's.

Each condition starts `--workers` worker processes (default 2) at the same moment; each runs a warm-up step and
then `--steps` training steps of a small Llama (SmolLM2-135M's shapes, `--layers` decoder layers, random weights,
C3A on q/v, batch 8 x 64 tokens) and reports its median step time. Conditions:
  default   OMP_WAIT_POLICY and OMP_NUM_THREADS unset: what run.py did before (torch takes one thread per
            core it sees, OpenMP threads spin while they wait)
  fitted    framework.threads.configure(), as run.py does now: passive waiting, threads = the CPUs the
            process may use (here both processes see all cores)
  shared    the same with SLURM_CPUS_PER_TASK = cores / 2: each run was given its half of the machine, as a
            scheduler would (the default ignores that variable)
Rounds alternate the order of the conditions. Ends with `RATIO concurrent_step_<cond>_vs_default <median>`
(per round: the mean over the workers of their median step time, relative to default's), the same for CPU
seconds per step (`concurrent_step_cpu_...`: spinning threads burn CPU without doing work) and SPREAD lines;
`solo_...` instead of `concurrent_...` with `--workers 1`, what passive waiting costs a run that has the machine
to itself. The machine may be loaded by other jobs: compare within a round, not across runs.
Run: python scripts/bench_threads.py [--rounds 2] [--steps 6] [--layers 4] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDITIONS = ("default", "fitted", "shared")


def worker(args) -> None:
    """One run: configure threads (or not) before torch loads, then time training steps."""
    sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
    if args.condition != "default":
        from framework import threads

        threads.configure()
    import torch

    from bench_c3a import build_llama

    model = build_llama("ours", ["q_proj", "v_proj"], args.layers, torch.device("cpu"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 49152, (8, 64), generator=torch.Generator().manual_seed(0))
    times, cpu_times = [], []
    for step in range(args.steps + 1):
        begin, cpu_begin = time.perf_counter(), time.process_time()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first is the warm-up
            times.append(time.perf_counter() - begin)
            cpu_times.append(time.process_time() - cpu_begin)
    print(json.dumps({"condition": args.condition, "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY"), "median_step_s": statistics.median(times),
                      "median_step_cpu_s": statistics.median(cpu_times)}))


def run_condition(condition: str, args) -> list[dict]:
    unset = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if condition == "shared":
        env["SLURM_CPUS_PER_TASK"] = str(max(1, len(os.sched_getaffinity(0)) // 2))
    command = [sys.executable, __file__, "--worker", condition, "--steps", str(args.steps),
               "--layers", str(args.layers)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(args.workers)]
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        raise SystemExit(f"a {condition} worker failed")
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="runs at once (1: a run alone)")
    parser.add_argument("--worker", choices=CONDITIONS, dest="condition", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.condition:
        worker(args)
        return 0
    if args.workers < 1 or args.rounds < 1 or args.steps < 1:
        parser.error(f"--workers={args.workers}, --rounds={args.rounds} and --steps={args.steps} must be >= 1")
    load = os.getloadavg()[0]
    print(f"{len(os.sched_getaffinity(0))} CPUs, load average {load:.1f} at the start", flush=True)
    per_round = []
    for index in range(args.rounds):
        order = CONDITIONS if index % 2 == 0 else CONDITIONS[::-1]
        row = {}
        for condition in order:
            workers = run_condition(condition, args)
            row[condition] = statistics.mean(w["median_step_s"] for w in workers)
            row[condition + "_cpu"] = statistics.mean(w["median_step_cpu_s"] for w in workers)
            print(f"round {index + 1} {condition:<8} threads {workers[0]['threads']} wait "
                  f"{workers[0]['wait_policy']}: step s " + " ".join(f"{w['median_step_s']:.2f}" for w in workers)
                  + "  CPU s per step " + " ".join(f"{w['median_step_cpu_s']:.2f}" for w in workers), flush=True)
        per_round.append(row)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    prefix = "concurrent" if args.workers > 1 else "solo"
    for condition in CONDITIONS[1:]:
        for suffix, kind in (("", "step"), ("_cpu", "step_cpu")):  # cpu: CPU seconds burnt per step (spinning counts)
            values = [row[condition + suffix] / row["default" + suffix] for row in per_round]
            print(f"RATIO {prefix}_{kind}_{condition}_vs_default {statistics.median(values):.4f}")
            print(f"SPREAD {prefix}_{kind}_{condition}_vs_default min={min(values):.4f} max={max(values):.4f} "
                  f"rounds={len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
