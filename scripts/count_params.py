"""`make params`: our trainable-parameter counts against the paper's, offline, exit 1 on any mismatch.

The rows are the table specs' (``paper_tables/*.yaml``, see framework/paper_tables.py): every declared row
whose paper CSV gives a parameter figure. Each is composed as ``run.py`` composes it (``experiment=<preset>``
plus the row's overrides) and built through the one model builder for its task's model kind and head,
on the meta device from the model entry's ``architecture`` (``model.pretrained=null``: no weights, no
download). Counts exclude the task head. Exact counts must match exactly; percentages (of all parameters
of the adapted model) and millions are compared at the precision the paper prints.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("WANDB_MODE", "offline")
# PEFT calls a transformers 5 deprecated property on every wrap; it says nothing about the counts
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from framework.paper_tables import ParamsFigure, SpecError, SpecRow, TableSpec, build_row, load_all  # noqa: E402
from framework.method import row_label  # noqa: E402

#: shapes from the model entry's architecture, never a download
SKELETON = ("model.pretrained=null",)


@dataclass(frozen=True)
class Check:
    """One row to count: its spec, the declared row and the paper's figure."""

    spec: TableSpec
    row: SpecRow
    paper: ParamsFigure


@dataclass
class Counted:
    check: Check
    ours_label: str
    trainable: int  # excluding the head
    total: int  # every parameter of the adapted model

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total

    @property
    def equal(self) -> bool:
        return bool(self.check.paper.matches(self.trainable, self.total))


def checks(specs: list[TableSpec]) -> list[Check]:
    """Every declared row whose paper CSV gives a numeric parameter figure: the paper's tables first (by name),
    then parameter-only specs."""
    found = []
    for spec in sorted(specs, key=lambda s: (not s.tasks, s.name)):
        for row in spec.rows:
            figure = spec.paper_params(spec.model_row(row.model), row.label)
            if figure is not None and figure.value is not None:
                found.append(Check(spec, row, figure))
    return found


def count(check: Check) -> Counted:
    built = build_row(check.row, weights="meta", extra_overrides=SKELETON)
    total = sum(p.numel() for p in built.adapted.model.parameters())
    return Counted(check, row_label(built.method, built.cfg.get("method_label")), built.adapted.num_adapter_params(),
                   total)


def format_table(results: list[Counted]) -> str:
    header = ("model", "method (paper)", "method (ours)", "ours", "paper", "% of all", "equal?")
    lines = []
    for c in results:
        lines.append((c.check.row.model, c.check.row.label, c.ours_label, f"{c.trainable:,}",
                      c.check.paper.show(), f"{c.percent:.3f}%", "yes" if c.equal else "NO"))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule, *(fmt.format(*line) for line in lines)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only rows of this model entry (repeatable)")
    parser.add_argument("--table", action="append", help="only rows of this spec (repeatable; default: all)")
    args = parser.parse_args(argv)
    try:
        specs = [s for s in load_all() if not args.table or s.name in args.table]
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    every = checks(specs)
    todo = [c for c in every if not args.model or c.row.model in args.model]
    if not todo:
        parser.error(f"no rows for --model {args.model} --table {args.table}; "
                     f"models: {sorted({c.row.model for c in every})}")
    results = [count(c) for c in todo]
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
