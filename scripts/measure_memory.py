"""Peak training memory of every row of a paper table (the memory columns of Tables 2 and 3).

The rows are the spec's (paper_tables/table2.yaml by default; framework/paper_tables.py), each composed as
run.py composes it (experiment=<preset> + overrides) and built through the one model builder with random
weights (the entry's architecture, no download). The paper's protocol: inputs fixed at 256 tokens,
batch 64, a few AdamW steps of the task's own training loss. Each row is measured in a fresh subprocess
so peaks do not leak into each other.

    python scripts/measure_memory.py                 # CPU, scaled down: peak RSS and the ratio to LoRA
    python scripts/measure_memory.py --device cuda   # the paper's protocol: torch.cuda.max_memory_allocated
    python scripts/measure_memory.py --presets table2/base_lora --on-model tiny-roberta   # a seconds-long check
    python scripts/measure_memory.py --device cuda --table table3 --batch-size 16 --seq-len 256   # LLaMA rows

Causal-LM rows put every token in the loss; image rows feed images at the model's size.

Writes results/memory/memory_<table>_<device>.csv (model, method_label, device, peak_bytes, ...), which
the table builder uses for its memory column, and prints `RATIO <model>/<method> <value>` lines.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from framework.paper_tables import SpecError, load_spec  # noqa: E402
from framework.io import atomic_write_text  # noqa: E402

PROTOCOL = {"cuda": {"batch_size": 64, "seq_len": 256, "steps": 3}, "cpu": {"batch_size": 4, "seq_len": 128, "steps": 2}}
FIELDS = ["model", "method", "method_label", "preset", "device", "peak_bytes", "ratio_to_lora", "batch_size", "seq_len",
          "steps", "trainable_excl_head", "peak_reserved_bytes", "device_name", "kind"]


def measure_one(spec_name: str, row_index: int, on_model: str | None, device: str, batch_size: int, seq_len: int,
                steps: int) -> dict:
    """Build the row's adapted model (random weights), train a few AdamW steps; the peak memory of those steps."""
    import resource

    import torch

    from framework.paper_tables import build_row
    from framework.memory import synthetic_batch
    from framework.method import row_label

    row = load_spec(spec_name).rows[row_index]
    torch.manual_seed(0)
    built = build_row(row, weights="random", extra_overrides=[f"model={on_model}"] if on_model else [])
    model = built.adapted.model.to(device)
    optimizer = torch.optim.AdamW([p for _, p in built.adapted.head + built.adapted.adapter], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    try:
        batch = synthetic_batch(built.cfg, built.task, batch_size, seq_len, generator)
    except ValueError as err:
        raise SystemExit(f"row {row.model} {row.label!r}: {err}") from None
    batch = {k: v.to(device) for k, v in batch.items()}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    for _ in range(steps):
        built.task.training_loss(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    out = {"model": built.cfg.model.name, "method": built.cfg.method.name,
           "method_label": row_label(built.method, built.cfg.get("method_label")), "preset": row.preset,
           "device": device, "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
           "trainable_excl_head": built.adapted.num_adapter_params()}
    if device == "cuda":
        torch.cuda.synchronize()
        out.update(peak_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                   device_name=torch.cuda.get_device_name())
    else:
        out.update(peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, kind="cpu_peak_rss")
    return out


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


ESTIMATE_FIELDS = ["model", "method_label", "preset", "batch_size", "seq_len", "total_gib", "weights_gib", "buffers_gib",
                   "gradients_gib", "optimizer_gib", "activations_gib", "trainable"]


def write_estimates(spec, chosen: list[int], args, protocol: dict) -> int:
    """``--estimate``: each chosen row's peak counted on the meta device, printed and written as CSV."""
    from framework.paper_tables import compose_row
    from framework.memory import build_on_meta, estimate_built
    from framework.method import row_label

    extra = ["model.pretrained=null", *([f"model={args.on_model}"] if args.on_model else [])]
    rows = []
    print(f"estimated peak training memory (meta device, a floor): batch {protocol['batch_size']} x "
          f"{protocol['seq_len']} tokens, AdamW")
    for index in chosen:
        cfg = compose_row(spec.rows[index], extra)
        try:
            built = build_on_meta(cfg)
        except ValueError as err:  # e.g. a block size that does not fit the --on-model layers
            print(f"  {spec.rows[index].model} {spec.rows[index].label}: FAILED: {err}", file=sys.stderr)
            continue
        counted = estimate_built(built, protocol["batch_size"], protocol["seq_len"]).as_dict()
        row = {"model": cfg.model.name, "method_label": row_label(built.method, cfg.get("method_label")),
               "preset": spec.rows[index].preset, "batch_size": protocol["batch_size"], "seq_len": protocol["seq_len"],
               "trainable": counted.pop("trainable"), **{f"{k}_gib": round(v / 2**30, 3) for k, v in counted.items()}}
        rows.append(row)
        print(f"  {row['model']:12s} {row['method_label']:16s} {row['total_gib']:8.2f} GiB  (weights "
              f"{row['weights_gib']:.2f}, buffers {row['buffers_gib']:.2f}, activations {row['activations_gib']:.2f})")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ESTIMATE_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(args.out_dir or ROOT / "results" / "memory_estimates") / (
        f"estimate_{args.table}_b{protocol['batch_size']}x{protocol['seq_len']}.csv")
    atomic_write_text(path, buffer.getvalue())
    print(f"wrote {path}")
    return 0 if len(rows) == len(chosen) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--table", default="table2", help="the spec whose rows are measured (paper_tables/<name>.yaml)")
    parser.add_argument("--models", nargs="+", help="only the spec's rows of these model entries")
    parser.add_argument("--presets", nargs="+", help="only the spec's rows of these presets (e.g. table2/base_lora)")
    parser.add_argument("--on-model", help="build every chosen row on this model entry instead (e.g. tiny-roberta)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out-dir", default=None, help="default: results/memory (results/memory_estimates "
                        "with --estimate: estimates never fill a table's measured column)")
    parser.add_argument("--estimate", action="store_true",
                        help="no training step: the peak counted on the meta device (framework/memory.py)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one row by index, JSON on stdout
    args = parser.parse_args()
    protocol = dict(PROTOCOL[args.device])
    for key in ("batch_size", "seq_len", "steps"):
        if getattr(args, key) is not None:
            protocol[key] = getattr(args, key)
    try:
        spec = load_spec(args.table)
    except SpecError as err:
        parser.error(str(err))
    if args.one is not None:
        print("RESULT " + json.dumps(measure_one(args.table, args.one, args.on_model, args.device, **protocol)))
        return 0
    chosen = [i for i, r in enumerate(spec.rows) if (not args.models or r.model in args.models)
              and (not args.presets or r.preset in args.presets)]
    if not chosen:
        parser.error(f"no rows of {spec.path.name} match --models {args.models} --presets {args.presets}; "
                     f"presets: {[r.preset for r in spec.rows]}")
    if args.estimate:
        return write_estimates(spec, chosen, args, protocol)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
            return 2

    rows = []
    print(f"peak training memory, {args.device}: batch {protocol['batch_size']} x {protocol['seq_len']} tokens, "
          f"{protocol['steps']} AdamW steps, random weights")
    for index in chosen:
        declared = spec.rows[index]
        env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
        command = [sys.executable, __file__, "--device", args.device, "--table", args.table, "--one", str(index),
                   "--batch-size", str(protocol["batch_size"]), "--seq-len", str(protocol["seq_len"]),
                   "--steps", str(protocol["steps"]), *(["--on-model", args.on_model] if args.on_model else [])]
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"  {declared.model} {declared.label}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print(f"  {row['model']:14s} {row['method_label']:14s} {row['peak_bytes'] / 2**30:8.3f} GiB", flush=True)
    for model_name in {r["model"] for r in rows}:
        lora = next((r for r in rows if r["model"] == model_name and r["method"] == "lora"), None)
        for row in rows:
            if row["model"] == model_name and lora:
                row["ratio_to_lora"] = row["peak_bytes"] / lora["peak_bytes"]
    path = Path(args.out_dir or ROOT / "results" / "memory") / f"memory_{args.table}_{args.device}.csv"  # tables read every memory/*.csv
    atomic_write_text(path, csv_text(rows))
    print(f"wrote {path}")
    for row in rows:
        if "ratio_to_lora" in row:
            print(f"RATIO {row['model']}/{row['method_label'].replace(' ', '_')}_vs_lora_peak_memory {row['ratio_to_lora']:.3f}")
    return 0 if len(rows) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
