"""Peak training memory of every Table 2 method (the paper's memory column).

The paper's protocol: inputs fixed at 256 tokens, batch 64, RoBERTa-base and -large. Weights are random
(the architecture from conf/model, no download); methods come from the same Hydra configs as run.py.
Each (model, method) is measured in a fresh subprocess so peaks do not leak into each other.

    python scripts/measure_memory.py                 # CPU, scaled down: peak RSS and the ratio to LoRA
    python scripts/measure_memory.py --device cuda   # the paper's protocol: torch.cuda.max_memory_allocated

Writes results/memory/memory_<device>.csv (model, method_label, device, peak_bytes, ...), which
`make table2` uses for its memory column, and prints `RATIO <model>/<method> <value>` lines.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (model config, method config, overrides) for every Table 2 row, plus the v4 full fine-tuning rows
ROWS = {
    "roberta-base": [("bitfit", []), ("ia3", []), ("lora", []), ("vera", ["method.r=1024"]), ("boft", []),
                     ("c3a", ["method.b=1"]), ("c3a", ["method.b=6"]), ("full", [])],
    "roberta-large": [("bitfit", []), ("ia3", []), ("lora", []), ("vera", ["method.r=256"]), ("boft", []),
                      ("c3a", ["method.b=1"]), ("c3a", ["method.b=8"]), ("full", [])],
    # seconds-long check of the script itself (tests)
    "tiny-roberta": [("lora", []), ("c3a", ["method.b=6"])],
}
PROTOCOL = {"cuda": {"batch_size": 64, "seq_len": 256, "steps": 3}, "cpu": {"batch_size": 4, "seq_len": 128, "steps": 2}}


def measure_one(model_name: str, method_name: str, overrides: list[str], device: str, batch_size: int,
                seq_len: int, steps: int) -> dict:
    """Build, adapt and train a few AdamW steps; return the peak memory of the training steps."""
    import resource

    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from c3a.models import build_model
    from c3a.tasks.base import HeadSpec

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model_name}", f"method={method_name}", "model.pretrained=null",
                                           "logger=none", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, HeadSpec(2, "single_label_classification"))
    method = instantiate(cfg.method, _convert_="all")
    adapted = method.apply(model, list(cfg.model.head_modules))
    model = adapted.model.to(device)
    params = [p for _, p in adapted.head + adapted.adapter]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = int(cfg.model.architecture.vocab_size)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=generator).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    mask = torch.ones_like(input_ids)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(input_ids=input_ids, attention_mask=mask).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    label = method.describe().get("label", method_name)
    out = {"model": model_name, "method": method_name, "method_label": label, "device": device,
           "batch_size": batch_size, "seq_len": seq_len, "steps": steps,
           "trainable_excl_head": adapted.num_adapter_params()}
    if device == "cuda":
        torch.cuda.synchronize()
        out.update(peak_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved(),
                   device_name=torch.cuda.get_device_name())
    else:
        out.update(peak_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, kind="cpu_peak_rss")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--models", nargs="+", default=["roberta-base", "roberta-large"], choices=list(ROWS))
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--out-dir", default=str(ROOT / "results" / "memory"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one measurement, JSON on stdout
    args = parser.parse_args()
    protocol = dict(PROTOCOL[args.device])
    for key in ("batch_size", "seq_len", "steps"):
        if getattr(args, key) is not None:
            protocol[key] = getattr(args, key)
    if args.one:
        model_name, method_name, *overrides = json.loads(args.one)
        print("RESULT " + json.dumps(measure_one(model_name, method_name, overrides, args.device, **protocol)))
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
            return 2

    rows = []
    print(f"peak training memory, {args.device}: batch {protocol['batch_size']} x {protocol['seq_len']} tokens, "
          f"{protocol['steps']} AdamW steps, random weights")
    for model_name in args.models:
        for method_name, overrides in ROWS[model_name]:
            env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
            proc = subprocess.run([sys.executable, __file__, "--device", args.device,
                                   "--one", json.dumps([model_name, method_name, *overrides]),
                                   "--batch-size", str(protocol["batch_size"]), "--seq-len", str(protocol["seq_len"]),
                                   "--steps", str(protocol["steps"])], capture_output=True, text=True, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                print(f"  {model_name} {method_name} {overrides}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(lines[-1][len("RESULT "):])
            rows.append(row)
            print(f"  {model_name:14s} {row['method_label']:14s} {row['peak_bytes'] / 2**30:8.3f} GiB", flush=True)
    for model_name in args.models:
        lora = next((r for r in rows if r["model"] == model_name and r["method"] == "lora"), None)
        for row in rows:
            if row["model"] == model_name and lora:
                row["ratio_to_lora"] = row["peak_bytes"] / lora["peak_bytes"]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"memory_{args.device}.csv"
    fields = ["model", "method", "method_label", "device", "peak_bytes", "ratio_to_lora", "batch_size", "seq_len",
              "steps", "trainable_excl_head", "peak_reserved_bytes", "device_name", "kind"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    print(f"wrote {path}")
    for row in rows:
        if "ratio_to_lora" in row:
            print(f"RATIO {row['model']}/{row['method_label'].replace(' ', '_')}_vs_lora_peak_memory {row['ratio_to_lora']:.3f}")
    return 0 if len(rows) == sum(len(ROWS[m]) for m in args.models) else 1


if __name__ == "__main__":
    sys.exit(main())
