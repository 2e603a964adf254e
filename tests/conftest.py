"""Shared test setup: offline everywhere, Hydra composition in tmp_path, the tiny-model run overrides."""
from __future__ import annotations

import os
from pathlib import Path

# Without these the Hub and W&B clients wait 25-100 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
TEST_GLUE = ROOT / "tests" / "data" / "glue"
GLUE_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI", "rte": "RTE", "stsb": "STS-B"}


def compose_cfg(overrides: list[str], root: Path):
    """Compose conf/ like run.py does, with ``root`` as paths.root_dir (framework.compose)."""
    from framework.compose import compose_config

    return compose_config(overrides, root)


def tiny_overrides(task: str = "sst2", method: str = "c3a") -> list[str]:
    """A seconds-long run: tiny random RoBERTa, the shipped few-row TSVs, one or two epochs."""
    return [
        "model=tiny-roberta", f"task={task}", f"method={method}", "tracker=none",
        f"task.data_dir={TEST_GLUE / GLUE_DIRS[task]}", "task.max_length=64",
        "task.val_size=4", "trainer.epochs=2", "trainer.batch_size=8", "trainer.eval_batch_size=16", "trainer.progress_bar=false",
    ]


def run_in(root: Path, overrides: list[str]):
    """One run as run.py makes it (``framework.pipeline.run``), with ``root`` as paths.root_dir."""
    from framework.pipeline import run

    return run(compose_cfg(overrides, root))


def result_files(root: Path, results_dir: str = "results") -> list[Path]:
    """The run results written under ``root`` (``<results_dir>/runs/**/*.json``), sorted."""
    return sorted((root / results_dir / "runs").rglob("*.json"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Many tiny kernels (circulant ops, a tiny UNet): one thread runs them faster than two competing with other
    work on a 2-core machine; results do not depend on it. A module opts in with ``pytestmark``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def compose(tmp_path):
    def _compose(overrides: list[str]):
        return compose_cfg(overrides, tmp_path)
    return _compose


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """Each device a check must hold on: the CPU always, a CUDA device where one is (`make gpu-check` runs the
    CUDA cases alone); skipped, with the reason, where none is."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here (make gpu-check runs these where one is)")
    return torch.device(request.param)
