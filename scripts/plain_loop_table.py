"""The run.py-vs-plain-loop table (issue 15 §1) from `scripts/plain_loop.py --out` files.

One row per setting (method, side, and the one setting changed), over its seeds: test accuracy on the task's
seeded 200 dev rows (what run.py scores) per seed, mean ± sd, the difference to its reference (the plain loop
to run.py; a changed setting to the plain loop) paired by seed, with a 95% bootstrap CI over seeds and
P(X > ref) (framework.stats), the accuracy on the dev file's first 200 rows (plain side only) and the median
training seconds.

  python scripts/plain_loop_table.py results/smollm2-plain-loop/runs.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from framework import stats  # noqa: E402


def label(record: dict) -> str:
    """The side, then every setting that differs from run.py's ("the correct answer is …" + EOS, right padding)."""
    side = "run.py" if record["side"] == "runpy" else "plain loop"
    changes = []
    if record.get("answer", "sentence") != "sentence":
        changes.append(f"answer {record['answer']}")
    if not record.get("eos", True):
        changes.append("no EOS")
    if record.get("padding", "right") != "right":
        changes.append(f"{record['padding']} padding")
    if record.get("train_subset", "seeded") != "seeded":
        changes.append(f"training rows: the file's {record['train_subset']} {record.get('train_rows')}")
    if record.get("clip") is not None:
        changes.append(f"clip {record['clip']}")
    changes += record.get("overrides") or []
    return side + (": " + ", ".join(changes) if changes else "")


def load(paths: list[Path]) -> pd.DataFrame:
    records = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise SystemExit(f"no results in {', '.join(map(str, paths))}")
    frame = pd.DataFrame(records)
    frame["setting"] = [label(r) for r in records]
    repeated = frame[frame.duplicated(["method", "setting", "seed"], keep=False)]
    if len(repeated):  # e.g. two files holding the same run: which one is meant is not ours to guess
        cases = sorted({f"{m} / {s} / seed {seed}" for m, s, seed in repeated[["method", "setting", "seed"]].values})
        raise SystemExit(f"the same method, setting and seed appear more than once in {', '.join(map(str, paths))}: "
                         f"{'; '.join(cases)}. Keep one line each.")
    return frame


def table(frame: pd.DataFrame) -> str:
    """Each setting against its reference: the plain loop and every changed run.py setting against run.py,
    every changed plain-loop setting against the plain loop (one setting at a time). Δ is paired by seed (the
    seeds both rows have); the CI and P(X > ref) compare all seeds of both rows (framework.stats: 3 seeds or
    more on each side)."""
    lines = ["| method | setting | seeds | test acc per seed (seeded 200) | mean ± sd | reference | Δ, same seeds "
             "| Δ 95% CI (all seeds) | P(X > ref) | first 200 rows, mean | train s (median) |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for method, rows in frame.groupby("method", sort=True):
        groups = {name: group.sort_values("seed") for name, group in rows.groupby("setting")}
        by_setting = {name: group.set_index("seed")["test_accuracy"] for name, group in groups.items()}
        order = sorted(by_setting, key=lambda s: (s != "run.py", not s.startswith("run.py"), s != "plain loop", s))
        for setting in order:
            runs, scores = groups[setting], by_setting[setting]
            per_seed = ", ".join(f"{v:.1f} (s{seed})" for seed, v in scores.items())
            spread = f"{scores.mean():.1f} ± {scores.std(ddof=1):.1f}" if len(scores) > 1 else f"{scores.iloc[0]:.1f}"
            # the plain loop and changed run.py settings against run.py, changed plain settings against the plain loop
            reference = (None if setting == "run.py" else "plain loop" if setting.startswith("plain loop:")
                         else "run.py")
            delta = interval = probability = "—"
            if reference in by_setting:
                ref = by_setting[reference]
                common = scores.index.intersection(ref.index)
                if len(common):
                    delta = f"{(scores[common] - ref[common]).mean():+.2f} (seeds {', '.join(map(str, common))})"
                estimate = stats.difference_interval(scores.tolist(), ref.tolist())
                interval = (f"[{estimate.low:+.2f}, {estimate.high:+.2f}]" if estimate.has_ci
                            else f"no CI: {estimate.reason}")
                p = stats.improvement_probability(scores.tolist(), ref.tolist())
                probability = "—" if p is None else f"{p:.2f}"
            first = runs["test_accuracy_first_rows"].dropna() if "test_accuracy_first_rows" in runs else []
            first_text = f"{first.mean():.1f}" if len(first) else "—"
            lines.append(f"| {method} | {setting} | {len(scores)} | {per_seed} | {spread} | {reference or '—'} "
                         f"| {delta} | {interval} | {probability} | {first_text} | {runs['train_s'].median():.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSONL files written by plain_loop.py --out")
    args = parser.parse_args(argv)
    print(table(load(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
