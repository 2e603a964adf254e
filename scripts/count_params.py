"""`make params`: our trainable-parameter counts against the paper's, offline, exit 1 on any mismatch.

Every row is built the way ``run.py`` builds a run: Hydra composes ``conf/`` (model, method and the
row's overrides) and ``hydra.utils.instantiate`` makes the method. The model is built from the model
entry's ``architecture`` on the meta device (no weights, no download) and the method applied to it.
Counts exclude the task head (Table 2's convention). LLaMA rows are causal LMs, as in the paper's
instruction tuning, and are checked as a percentage of all parameters (the paper gives only that).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")
# PEFT calls a transformers 5 deprecated property on every wrap; it says nothing about the counts
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# C3A on LLaMA (PAPER.md §4, inferred from 0.35% / 0.26%): q, k, v at block 128, up/down at block 256
LLAMA_C3A = ["method.b=null", "method.block_size=128", "method.target_modules=${model.targets.instruct}",
             "+method.block_size_pattern.up_proj=256", "+method.block_size_pattern.down_proj=256"]


@dataclass(frozen=True)
class Row:
    """One paper row: how to build it (model entry, method config, overrides) and the paper's number."""

    model: str
    label: str  # the paper's method label
    method: str
    overrides: list[str] = field(default_factory=list)
    paper_count: int | None = None  # exact trainable count excluding the head (Table 2)
    paper_percent: float | None = None  # % of all parameters, 2 decimals (LLaMA tables)
    causal_lm: bool = False


ROWS = [
    Row("roberta-base", "BitFit", "bitfit", paper_count=102_144),
    Row("roberta-base", "(IA)3", "ia3", paper_count=110_592),
    Row("roberta-base", "LoRA r=8", "lora", ["method.r=8"], paper_count=294_912),
    Row("roberta-base", "VeRA r=1024", "vera", ["method.r=1024"], paper_count=43_008),
    Row("roberta-base", "BOFT b=8 m=2", "boft", paper_count=165_888),
    Row("roberta-base", "C3A b=1", "c3a", ["method.b=1"], paper_count=18_432),
    Row("roberta-base", "C3A b=6", "c3a", ["method.b=6"], paper_count=110_592),
    Row("roberta-large", "BitFit", "bitfit", paper_count=271_360),
    Row("roberta-large", "(IA)3", "ia3", paper_count=294_912),
    Row("roberta-large", "LoRA r=8", "lora", ["method.r=8"], paper_count=786_432),
    Row("roberta-large", "VeRA r=256", "vera", ["method.r=256"], paper_count=61_440),
    Row("roberta-large", "BOFT b=8 m=2", "boft", paper_count=442_368),
    Row("roberta-large", "C3A b=1", "c3a", ["method.b=1"], paper_count=49_152),
    Row("roberta-large", "C3A b=8", "c3a", ["method.b=8"], paper_count=393_216),
    Row("llama2-7b", "C3A b=4096/32", "c3a", LLAMA_C3A, paper_percent=0.35, causal_lm=True),
    Row("llama3-8b", "C3A b=4096/32", "c3a", LLAMA_C3A, paper_percent=0.26, causal_lm=True),
]


@dataclass
class Counted:
    row: Row
    ours_label: str
    trainable: int  # excluding the head
    total: int  # every parameter of the adapted model
    equal: bool

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total


def compose(row: Row):
    """The composed run config for a row, exactly as ``run.py`` would compose it."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=[f"model={row.model}", f"method={row.method}", *row.overrides])


def build_skeleton(model_cfg, causal_lm: bool):
    """The model entry's architecture on the meta device: shapes only, never a download."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    arch = {k: v for k, v in OmegaConf.to_container(model_cfg.architecture, resolve=True).items() if v is not None}
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    auto = AutoModelForCausalLM if causal_lm else AutoModelForSequenceClassification
    with torch.device("meta"):
        return auto.from_config(config)


def count_row(row: Row) -> Counted:
    from hydra.utils import instantiate

    cfg = compose(row)
    method = instantiate(cfg.method, _convert_="all")
    model = build_skeleton(cfg.model, row.causal_lm)
    # a causal LM's head is lm_head (frozen in the paper's runs; excluded from the count either way)
    head_modules = ["lm_head"] if row.causal_lm else list(cfg.model.head_modules)
    adapted = method.apply(model, head_modules)
    trainable = adapted.num_adapter_params()
    total = sum(p.numel() for p in adapted.model.parameters())
    counted = Counted(row, method.describe()["label"], trainable, total, equal=False)
    if row.paper_count is not None:
        counted.equal = trainable == row.paper_count
    else:
        counted.equal = round(counted.percent, 2) == row.paper_percent
    return counted


def format_table(results: list[Counted]) -> str:
    header = ("model", "method (paper)", "method (ours)", "ours", "paper", "% of all", "equal?")
    lines = []
    for c in results:
        paper = f"{c.row.paper_count:,}" if c.row.paper_count is not None else f"{c.row.paper_percent:.2f}%"
        lines.append((c.row.model, c.row.label, c.ours_label, f"{c.trainable:,}", paper, f"{c.percent:.3f}%",
                      "yes" if c.equal else "NO"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule, *(fmt.format(*line) for line in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only rows of this model entry (repeatable)")
    args = parser.parse_args(argv)
    rows = [r for r in ROWS if not args.model or r.model in args.model]
    if not rows:
        parser.error(f"no rows for --model {args.model}; models: {sorted({r.model for r in ROWS})}")
    results = [count_row(row) for row in rows]
    print("Trainable parameters excluding the task head; % of all parameters of the adapted model.")
    print(format_table(results))
    wrong = [c for c in results if not c.equal]
    if wrong:
        print(f"\n{len(wrong)} row(s) differ from the paper", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} rows match the paper")
    return 0


if __name__ == "__main__":
    sys.exit(main())
