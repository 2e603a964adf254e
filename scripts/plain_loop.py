"""Same learning as a plain loop? The instruction path through `run.py` vs a plain PyTorch loop (issue 15 §1).

Both sides get the same rows, prompt, labels, schedule and seed: the rows are the task's own (composed from
the run.py overrides below: train / test subsets, chat prompt, answer + EOS labels), and the plain loop
visits them in the trainer's shuffled order, with AdamW (no weight decay), warm-up + cosine, and the same
evaluation (left-padded greedy generation, first-keyword rule) on the same test rows. It is ~60 lines of
plain PyTorch/transformers, with `c3a.add_c3a` or PEFT's LoRA; flags change one setting at a time:

  --clip 1.0          clip the global gradient norm at 1.0 (run.py's default; the plain loop's default: none)
  --answer word       train on the answer word alone + EOS (the task's task.train.answer=word, both sides;
                      default: "the correct answer is <word>")
  --no-eos            no EOS in the labels
  --padding left      left-pad the training batches (run.py and the plain loop's default: right)
  --train-subset first  train on the training file's first N rows (run.py: a seeded N of the rows left after
                      the validation slice)

Every plain run scores two test subsets of the same dev file in one pass: the task's seeded subset (what
run.py scores) and the file's first N rows (what the issue's own plain loop scored).

`--side runpy` runs `framework.pipeline.run` instead (extra arguments are Hydra overrides, e.g.
`trainer.max_grad_norm=null`). Prints one `RESULT` line per seed (test accuracy, train seconds); `--out FILE`
also appends it to FILE as a JSON line and skips the seeds FILE already holds for the same setting (a rerun
resumes). `scripts/plain_loop_table.py FILE` makes the table.
Example (the issue's setting, one seed):
  python scripts/plain_loop.py --method c3a --side plain --seeds 0
  python scripts/plain_loop.py --method c3a --side runpy --seeds 0 trainer.max_grad_norm=null
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from framework import threads  # noqa: E402

threads.configure()  # before torch loads, as run.py

import torch  # noqa: E402

GLUE = ROOT.parent / "shared" / "data" / "glue" / "SST-2"
METHODS = {  # the two adapters: overrides for run.py, and the learning rate both sides use
    "c3a": (["method=c3a", "method.b=null", "method.block_size=64"], 0.3),
    "lora": (["method=lora", "method.r=8", "method.lora_alpha=16", "method.lora_dropout=0.0"], 3e-4),
}


def overrides(args, seed: int, work: Path) -> list[str]:
    method, lr = METHODS[args.method]
    return ["model=smollm2", "task=sst2-instruct", f"task.data_dir={args.data_dir}",
            f"task.max_train_samples={args.train_rows}", f"task.val_size={args.val_rows}",
            f"task.max_eval_samples={args.test_rows}", f"trainer.batch_size={args.batch_size}", "trainer.epochs=1",
            f"trainer.eval_batch_size={args.eval_batch_size}", "trainer.test_every_epoch=false",
            "trainer.save_best=false", "trainer.checkpoint_every_epoch=false", "trainer.progress_bar=false",
            "tracker=none", f"seed={seed}", f"paths.root_dir={work}", "force=true",
            f"paths.cache_dir={args.cache_dir}", *method, f"learning_rates.default.adapter={lr}",
            f"method.target_modules=[{','.join(args.targets)}]", f"task.train.answer={args.answer}", *args.overrides]


def without_eos(rows: list[dict], eos_id: int) -> list[dict]:
    """The task's rows with the EOS that ends each label dropped (rows cut at max_length have none to drop)."""
    out = []
    for row in rows:
        ends_in_eos = len(row["input_ids"]) > 0 and row["input_ids"][-1] == eos_id and row["labels"][-1] == eos_id
        keep = len(row["input_ids"]) - 1 if ends_in_eos else len(row["input_ids"])
        out.append({"input_ids": row["input_ids"][:keep], "labels": row["labels"][:keep]})
    return out


def test_subsets(task, tokenizer, count: int) -> tuple[list[dict], dict[str, set[int]]]:
    """Generation rows for the union of the task's seeded test subset (what run.py scores) and the first
    ``count`` rows of the same file; each row's ``set`` holds its position in the file, so one pass scores both."""
    (name,) = task.test_sources  # one test set (SST-2 dev)
    examples = task.examples(f"test/{name}")
    subsets = {"seeded": set(task.test_positions()[name]), "first": set(range(min(count, len(examples))))}
    union = sorted(subsets["seeded"] | subsets["first"])
    rows = task.eval_rows([examples[i] for i in union], [str(i) for i in union], tokenizer)
    return rows, subsets


def plain_run(cfg, args, seed: int) -> dict:
    """The plain loop on the task's rows (the ~60 lines this comparison is about)."""
    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from framework.gguf_cache import converted_folder
    from framework.models import resolve_source

    folder = converted_folder(resolve_source(cfg.model.pretrained), cfg.model.gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    task = instantiate(cfg.task, _convert_="all")
    splits = task.splits(tokenizer)
    train = list(splits["train"].rows)
    if args.train_subset == "first":
        train, _ = task.train_rows(task.examples("train")[:args.train_rows], tokenizer)
    if args.no_eos:
        train = without_eos(train, tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    model.requires_grad_(False)
    if args.method == "c3a":
        from c3a import C3AConfig, add_c3a

        add_c3a(model, C3AConfig(target_modules=list(args.targets), block_size=64))
        params = [p for n, p in model.named_parameters() if "c3a_kernel" in n]
    else:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=args.targets))
        params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    lr = METHODS[args.method][1]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = math.ceil(len(train) / args.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.05 * steps), steps)
    pad = tokenizer.pad_token_id
    # the trainer's shuffle (framework.trainer.EpochSeededSampler, epoch 0)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003)).tolist()
    model.train()
    norms, begin = [], time.perf_counter()
    for start in range(0, len(order), args.batch_size):
        rows = [train[i] for i in order[start:start + args.batch_size]]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            span = slice(width - n, width) if args.padding == "left" else slice(0, n)
            ids[i, span], labels[i, span], mask[i, span] = (torch.as_tensor(r["input_ids"]),
                                                            torch.as_tensor(r["labels"]), 1)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        # the global gradient norm before clipping (an infinite max norm leaves the gradients as they are)
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, args.clip or math.inf)))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - begin
    model.eval()
    collate = task.collate(tokenizer, "test")
    test, subsets = test_subsets(task, tokenizer, args.test_rows)
    verdicts = {}
    with torch.no_grad():
        for start in range(0, len(test), args.eval_batch_size):
            batch = collate(test[start:start + args.eval_batch_size])
            for at, verdict in zip(batch["set"], task.score(task.generate(model, batch, tokenizer), batch)):
                verdicts[int(at)] = verdict["base"]
    accuracy = {k: 100 * sum(verdicts[i] for i in rows) / len(rows) for k, rows in subsets.items()}
    return {"test_accuracy": accuracy["seeded"], "test_accuracy_first_rows": accuracy["first"],
            "test_overlap": len(subsets["seeded"] & subsets["first"]), "train_s": train_s,
            "rows_trained": len(train), "trainable": sum(p.numel() for p in params),
            "rows_scored": len(subsets["seeded"]), "steps": steps,
            "grad_norm_median": sorted(norms)[len(norms) // 2], "grad_norm_first_last": [norms[0], norms[-1]],
            # per-element RMS of the gradient: next to AdamW's eps (1e-8) it says whether clipping can matter
            "grad_rms_median": sorted(norms)[len(norms) // 2] / math.sqrt(sum(p.numel() for p in params))}


def runpy_run(cfg) -> dict:
    from framework.pipeline import run

    result = run(cfg)
    return {"test_accuracy": 100 * result.test_at_best["score"], "train_s": result.timing.get("train_time_s"),
            "trainable": result.params.get("trainable_total")}


def build_parser() -> argparse.ArgumentParser:
    """The command line; also what scripts/bench_loop.py builds its plain-loop settings from."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--side", choices=("plain", "runpy"), default="plain")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--clip", type=float, default=None, help="max gradient norm (plain side; default none)")
    parser.add_argument("--answer", choices=("sentence", "word"), default="sentence")
    parser.add_argument("--no-eos", action="store_true")
    parser.add_argument("--train-subset", choices=("seeded", "first"), default="seeded", help="plain side")
    parser.add_argument("--padding", choices=("right", "left"), default="right", help="training batches (plain side)")
    parser.add_argument("--train-rows", type=int, default=512)
    parser.add_argument("--val-rows", type=int, default=64)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-batch-size", type=int, default=50)
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--data-dir", type=Path, default=GLUE)
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "plain_loop")
    parser.add_argument("--out", type=Path, default=None, help="JSONL file: append results, skip seeds it holds")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (both sides read the task from them)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plain_only = {"--clip": args.clip is not None, "--no-eos": args.no_eos, "--padding": args.padding != "right",
                  "--train-subset": args.train_subset != "seeded"}
    if args.side == "runpy" and any(plain_only.values()):
        parser.error(f"{', '.join(k for k, v in plain_only.items() if v)}: plain side only; run.py takes its "
                     "settings as Hydra overrides (e.g. trainer.max_grad_norm=null)")
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("framework").setLevel(logging.INFO)  # the pipeline's summary line (test score)
    from framework.compose import compose_config

    done = set()
    if args.out is not None and args.out.exists():
        done = {_key(json.loads(line)) for line in args.out.read_text().splitlines() if line.strip()}
    for seed in args.seeds:
        setting = {"method": args.method, "side": args.side, "seed": seed, "clip": args.clip, "answer": args.answer,
                   "eos": not args.no_eos, "padding": args.padding, "overrides": args.overrides,
                   "train_subset": args.train_subset, "train_rows": args.train_rows, "test_rows": args.test_rows,
                   "batch_size": args.batch_size}
        if _key(setting) in done:
            print(f"skipped (in {args.out}): {json.dumps(setting)}", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="plain_loop_") as work:
            cfg = compose_config(overrides(args, seed, Path(work)), Path(work))
            begin = time.perf_counter()
            out = plain_run(cfg, args, seed) if args.side == "plain" else runpy_run(cfg)
        line = json.dumps({**setting, **out, "wall_s": round(time.perf_counter() - begin, 1)})
        print("RESULT " + line, flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as handle:  # one short write per line: a crash leaves whole lines
                handle.write(line + "\n")
    return 0


SETTING_KEYS = ("method", "side", "seed", "clip", "answer", "eos", "padding", "overrides", "train_subset",
                "train_rows", "test_rows", "batch_size")


def setting_of(record: dict) -> dict:
    """What identifies a run in a results file (its setting and seed, not its measurements)."""
    return {k: record.get(k) for k in SETTING_KEYS}


def _key(record: dict) -> str:
    """A run's setting as one comparable string, whatever the order of the record's keys."""
    return json.dumps(setting_of(record), sort_keys=True)


if __name__ == "__main__":
    sys.exit(main())
