"""`make diffusion-demo`: the DreamBooth run offline on the tiny RANDOM-weight pipeline and a real photo.

No diffusion weights ship offline, so this is ``experiment=diffusion/tiny_demo``: C3A on the config-built
tiny Stable-Diffusion-shaped pipeline (random init), trained on scikit-image's photo of Chelsea the cat
with prior preservation. It exercises every step of a real run; its samples are noise by construction.
The sample grid is copied to results/diffusion/ with its colours reduced to a 16-colour palette (noise does
not compress: the full-colour grid stays in the run's artifacts folder). With the Hub and a GPU, see
docs/diffusion.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NOTICE = ("NOTE: tiny random pipeline - model=tiny-sd is built from configs with RANDOM weights (no diffusion "
          "weights ship offline). The run is real (data, prior cache, training, validation, samples, result "
          "file) but its samples are noise by construction; docs/diffusion.md has the SD 1.5 command.")


def export_photos(folder: Path) -> list[Path]:
    """The instance images: scikit-image's photo of Chelsea the cat, as PNG."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chelsea.png"
    if not path.exists():
        Image.fromarray(skimage.data.chelsea()).save(path)
    return [path]


def main() -> int:
    print(NOTICE, flush=True)
    instance = ROOT / "cache" / "diffusion_demo" / "instance"
    photos = export_photos(instance)
    print(f"instance images: {[str(p) for p in photos]}", flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "run.py"), "experiment=diffusion/tiny_demo", f"paths.root_dir={ROOT}",
               f"task.instance_dir={instance}", *sys.argv[1:]]
    print("+", " ".join(command[1:]), flush=True)
    if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
        return 1
    runs = sorted((ROOT / "results" / "runs" / "dreambooth" / "tiny-sd").rglob("*.json"), key=os.path.getmtime)
    result = json.loads(runs[-1].read_text())
    grid = Path(result["artifacts"]["samples"])
    target = ROOT / "results" / "diffusion" / "tiny_demo_samples.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(grid) as image:
        image.quantize(16).save(target, optimize=True)
    info = json.loads(Path(result["artifacts"]["samples_info"]).read_text())
    print(f"result: {runs[-1]}\n  best epoch {result['best_epoch']}/{len(result['epochs'])}, val loss "
          f"{result['best_val']['loss']:.4f}, test loss {result['test_at_best']['loss']:.4f}, "
          f"{result['params']['trainable_excl_head']:,} trainable parameters ({result['method_label']})\n"
          f"  samples ({' / '.join(info['prompts'])} x seeds {info['seeds']}): {target}\n"
          f"  {info['clip'].get('skipped', info['clip'])}", flush=True)
    print(NOTICE, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
