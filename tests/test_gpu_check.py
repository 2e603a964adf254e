"""What `make gpu-check` runs needs only what the lent GPU machines' image holds: nothing can be installed there
but carried wheels, and the image has no hydra, omegaconf, datasets, evaluate or wandb. So its test modules and
benchmarks are run here with those packages hidden (`python -S` over a view of site-packages without them): a
new import of one of them anywhere on those paths fails this test, not a GPU's few minutes."""
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ABSENT = ("hydra", "omegaconf", "antlr4", "datasets", "evaluate", "wandb")
TEST_MODULES = ["tests/test_circulant.py", "tests/test_devices.py"]
SCRIPTS = ["scripts/bench_paper_llama.py", "scripts/bench_c3a.py"]


@pytest.fixture(scope="module")
def image_like(tmp_path_factory) -> dict:
    """An environment whose importable packages are this one's minus ABSENT (and minus .pth hooks: `-S`)."""
    view = tmp_path_factory.mktemp("site")
    for site_packages in site.getsitepackages():
        for entry in Path(site_packages).iterdir():
            hidden = entry.name.lower().startswith(ABSENT) or entry.suffix == ".pth"
            if not hidden and not (view / entry.name).exists():
                (view / entry.name).symlink_to(entry)
    return dict(os.environ, PYTHONPATH=str(view), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false")


def run(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_what_gpu_check_runs_is_what_this_test_covers():
    steps = [line for line in (ROOT / "scripts" / "gpu_check.sh").read_text().splitlines() if line.startswith("step ")]
    named = {path for line in steps for path in re.findall(r"\b(?:tests|scripts)/\w+\.py\b", line)}
    assert named == set(TEST_MODULES + SCRIPTS), named


def test_the_packages_are_hidden(image_like):
    proc = run(["-c", f"import torch, transformers, peft, numba, yaml, pytest; import {ABSENT[0]}"], image_like)
    assert proc.returncode != 0 and f"No module named '{ABSENT[0]}'" in proc.stderr, proc.stderr[-1500:]


def test_gpu_checks_test_modules_collect_without_them(image_like):
    proc = run(["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *TEST_MODULES], image_like)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_training_steps_match_float64_on_the_cpu[cuda-fp32-merged]" in proc.stdout


def test_gpu_checks_benchmarks_run_without_them(image_like):
    for args in (["--device", "cpu", "--model", "tiny-llama", "--batch", "2", "--seq", "16", "--rounds", "1"],
                 ["--device", "cpu", "--quick", "--parts", "llama", "--threads", "1"]):
        script = SCRIPTS[0] if "--model" in args else SCRIPTS[1]
        proc = run([script, *args], image_like)
        assert proc.returncode == 0 and "RATIO " in proc.stdout, (script, proc.stderr[-2000:])
