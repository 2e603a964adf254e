"""Sweeps through the real CLI (`python run.py -m …`): skip-when-done, bad cells, resume, launchers, LR search.

Every sweep runs the tiny random RoBERTa on the shipped few-row SST-2 for one optimizer step, so a
cell costs about as much as starting Python; the cost is the interpreter and imports per process.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, result_files, tiny_overrides

# one optimizer step per cell; no checkpoint files or per-epoch test passes to write
FAST = ["debug=fast", "trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.save_best=false",
        "trainer.test_every_epoch=false"]


def _sweep(root: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """`python run.py -m <tiny cell> <args>` from the repo root, everything written under ``root``."""
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", *tiny_overrides("sst2"), *FAST,
           f"paths.root_dir={root}", f"hydra.sweep.dir={root / 'multirun'}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    proc.log = proc.stdout + proc.stderr
    return proc


def _written(root: Path) -> dict[Path, int]:
    """Result file → mtime (ns): what a sweep left behind and when it was written."""
    return {p: p.stat().st_mtime_ns for p in result_files(root)}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------
# Basic launcher: one sweep grown in three steps (as after a kill, then a plain rerun)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grown_sweep(tmp_path_factory):
    """Two sweeps into one root: `seed=0 b=1,5`, then `seed=0,1 b=1,5` (b=5 does not divide 48).

    The first stands for a sweep killed after its first cell, the second for rerunning it in full.
    Results and their mtimes are recorded after each.
    """
    root = tmp_path_factory.mktemp("grown")
    steps = []
    for seeds in ("0", "0,1"):
        proc = _sweep(root, f"seed={seeds}", "method.b=1,5")
        steps.append((proc, _written(root)))
    return root, steps


def test_a_bad_cell_does_not_stop_the_sweep(grown_sweep):
    """b=5 fails validation: it is logged, leaves no result, and the good cell and the exit code are unaffected."""
    _, [(proc, results), *_] = grown_sweep
    assert proc.returncode == 0, proc.log[-3000:]
    assert "bad input" in proc.log and "b=5" in proc.log
    [path] = results
    data = _load(path)
    assert data["status"] == "completed" and data["seed"] == 0 and data["config"]["method"]["b"] == 1


def test_rerun_with_more_seeds_runs_only_the_missing_cells(grown_sweep):
    """Finished cells survive an interrupted sweep; the rerun skips them and runs only what is missing."""
    _, [(_, first), (proc, second)] = grown_sweep
    assert proc.returncode == 0, proc.log[-3000:]
    [seed0] = first
    assert second[seed0] == first[seed0], "the finished cell was not rewritten"
    assert f"skip: a completed result exists at {seed0}" in proc.log
    new = set(second) - set(first)
    assert [p.name for p in new] == ["seed1.json"] and new.pop().parent == seed0.parent  # same config, next seed
    assert proc.log.count("result: ") == 1 and proc.log.count("bad input") == 2
    assert all(_load(p)["config"]["method"]["b"] == 1 for p in second), "the bad cell never writes a result"


@pytest.mark.slow
def test_rerunning_a_finished_sweep_runs_nothing(grown_sweep):
    """The same command again: every good cell is skipped and no result file is touched."""
    root, [_, (_, before)] = grown_sweep
    proc = _sweep(root, "seed=0,1", "method.b=1,5")
    assert proc.returncode == 0, proc.log[-3000:]
    assert _written(root) == before
    assert proc.log.count("skip: a completed result exists") == 2 and "result: " not in proc.log


# ---------------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher,target,settings", [
    ("slurm", "SlurmLauncher", {"gpus_per_node": 1, "tasks_per_node": 1, "timeout_min": 1440, "max_num_timeout": 3}),
    ("submitit_local", "LocalLauncher", {}),
    ("local_parallel", "JoblibLauncher", {"n_jobs": 2, "backend": "loky"}),
])
def test_launcher_configs_compose(tmp_path, launcher, target, settings):
    """`--cfg hydra` composes each launcher with our settings and submits nothing."""
    cmd = [sys.executable, str(ROOT / "run.py"), f"hydra/launcher={launcher}", f"paths.root_dir={tmp_path}",
           "--cfg", "hydra", "-p", "hydra.launcher"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher_cfg = yaml.safe_load(proc.stdout)
    assert launcher_cfg["_target_"].endswith(target)
    assert {k: launcher_cfg[k] for k in settings} == settings
    assert not list(tmp_path.iterdir()), "printing the config runs and submits nothing"


@pytest.mark.slow
def test_local_parallel_launcher_runs_every_cell(tmp_path):
    """hydra-joblib-launcher, two cells in two worker processes at once: both results are written."""
    proc = _sweep(tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "seed=0,1")
    assert proc.returncode == 0, proc.log[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.log
    results = result_files(tmp_path)
    assert sorted(p.name for p in results) == ["seed0.json", "seed1.json"]
    assert all(_load(p)["status"] == "completed" for p in results)


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_cell(tmp_path):
    """hydra-submitit-launcher's local executor (the SLURM code path minus sbatch) runs a cell to a result."""
    proc = _sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "seed=0")
    assert proc.returncode == 0, proc.log[-3000:]
    [path] = result_files(tmp_path)
    assert _load(path)["status"] == "completed"
    # the cell ran in a submitit job (its own process), not in the launching one
    assert list((tmp_path / "multirun" / ".submitit").rglob("*_result.pkl"))
    assert "result: " not in proc.log


# ---------------------------------------------------------------------------------------------------
# Optuna LR search
# ---------------------------------------------------------------------------------------------------


def _optuna_storage_works() -> bool:
    """optuna 2.x's SQLite storage is broken under SQLAlchemy 2 (hydra-optuna-sweeper pins optuna<3)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return int(version("sqlalchemy").split(".")[0]) < 2 or int(version("optuna").split(".")[0]) >= 3
    except PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _optuna_storage_works(), reason="optuna<3 needs sqlalchemy<2: pip install 'sqlalchemy<2' 'alembic<1.14'")
def test_lr_search_runs_trials_and_resumes_its_study(tmp_path):
    """Trials write results and a persistent study; a rerun adds its n_trials to the same study at new LRs."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = _sweep(tmp_path, "hparams_search=lr_optuna", "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.log[-3000:]
    [name] = optuna.get_all_study_summaries(storage)  # one study in <paths.root_dir>/optuna.db
    assert name.study_name == "lr_sst2_tiny-roberta_c3a_None"
    assert len(optuna.load_study(study_name=name.study_name, storage=storage).trials) == 2

    again = _sweep(tmp_path, "hparams_search=lr_optuna", "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.log[-3000:]
    study = optuna.load_study(study_name=name.study_name, storage=storage)
    assert len(study.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    lrs = {(t.params["trainer.lr_head"], t.params["trainer.lr_adapter"]) for t in study.trials}
    assert len(lrs) == 3, "the resumed search samples new LRs instead of replaying the first run's"
    for head, adapter in lrs:
        assert 1e-6 <= head <= 1e-1 and 1e-5 <= adapter <= 1.0

    # each trial is an ordinary run, kept apart from Table 2's results: it holds its LRs, its value is
    # the validation score
    assert not result_files(tmp_path)
    results = [_load(p) for p in result_files(tmp_path, "lr_search")]
    assert len(results) == 3
    by_lrs = {(r["config"]["trainer"]["lr_head"], r["config"]["trainer"]["lr_adapter"]): r for r in results}
    assert set(by_lrs) == lrs
    for trial in study.trials:
        run = by_lrs[(trial.params["trainer.lr_head"], trial.params["trainer.lr_adapter"])]
        assert trial.value == run["best_val"][run["selection_metric"]]
