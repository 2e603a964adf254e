"""One run at a time, and a completed result is never lost (issue 14 §3).

Real concurrent processes (spawned: a fresh interpreter each) run the same tiny GLUE run: the second one
stops at once naming the holder's pid, or waits for it with ``wait_for_lock=true``; a killed holder's
lock is released by the OS; an interrupted forced rerun leaves the completed result as it was; a
checkpoint resumes only on the data it was trained on.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from conftest import TEST_GLUE, compose_cfg, result_files, tiny_overrides

SPAWN = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared by fork


def _identity(root: Path, overrides: list[str]) -> tuple[str, Path]:
    from framework.pipeline import identity, prepare, resolved_config

    cfg = compose_cfg(overrides, root)
    return identity(cfg, resolved_config(cfg), prepare(cfg).method.describe()["name"])


# ------------------------------------------------------------------------------------- child processes
def _run_pausing_after_epoch_one(root: str, overrides: list[str], paused, go) -> None:
    """A real run that waits after its first checkpoint until ``go`` is set (it holds the run's lock)."""
    import framework.trainer as trainer
    from framework.pipeline import run

    save = trainer.save_checkpoint

    def save_then_wait(state, path):
        save(state, path)
        paused.set()
        go.wait(300)

    trainer.save_checkpoint = save_then_wait
    run(compose_cfg(overrides, Path(root)))


def _hold_lock(path: str, rid: str, locked) -> None:
    from framework.results import run_lock

    with run_lock(path, rid):
        locked.set()
        time.sleep(600)


# ------------------------------------------------------------------------------------- tests
def test_a_second_process_stops_at_once_naming_the_holder_or_waits_for_it(tmp_path, monkeypatch):
    import fcntl

    import framework.trainer as trainer
    from framework.pipeline import run
    from framework.results import RunInProgressError, load_result

    overrides = tiny_overrides() + ["trainer.epochs=2"]
    rid, path = _identity(tmp_path, overrides)
    paused, go = SPAWN.Event(), SPAWN.Event()
    first = SPAWN.Process(target=_run_pausing_after_epoch_one, args=(str(tmp_path), overrides, paused, go))
    first.start()
    try:
        assert paused.wait(300), "the first process never finished its first epoch"
        with pytest.raises(RunInProgressError) as caught:
            run(compose_cfg(overrides, tmp_path))
        assert rid in str(caught.value) and f"process {first.pid}" in str(caught.value)
        assert not path.exists(), "the stopped process wrote no result"
        checkpoint = tmp_path / "checkpoints" / rid / trainer.CHECKPOINT_FILE
        assert checkpoint.is_file(), "the stopped process left the first one's checkpoint alone"

        # wait_for_lock=true: blocks until the holder is done, then finds its completed result (trains nothing)
        waited = []
        flock = fcntl.flock

        def flock_then_release_the_holder(fd, operation):
            if not operation & fcntl.LOCK_NB:  # about to block on the holder: let it finish now
                waited.append(True)
                go.set()
            return flock(fd, operation)

        def no_training(*args, **kwargs):
            raise AssertionError("the waiting process trained the run the holder completed")

        monkeypatch.setattr(fcntl, "flock", flock_then_release_the_holder)
        monkeypatch.setattr(trainer, "fit", no_training)
        result = run(compose_cfg(overrides + ["wait_for_lock=true"], tmp_path))
        assert waited, "the second process never waited on the lock"
        assert result.status == "completed" and result == load_result(path)
    finally:
        go.set()
        first.join(300)
        if first.is_alive():
            first.kill()
    assert first.exitcode == 0
    assert len(load_result(path).epochs) == 2 and not checkpoint.exists()


def test_a_killed_holder_releases_the_lock(tmp_path):
    from framework.pipeline import run

    overrides = tiny_overrides() + ["trainer.epochs=1"]
    rid, path = _identity(tmp_path, overrides)
    locked = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_lock, args=(str(path), rid, locked))
    holder.start()
    try:
        assert locked.wait(120)
        assert path.with_suffix(".lock").read_text().strip() == str(holder.pid)
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(60)
    finally:
        if holder.is_alive():
            holder.kill()
    assert run(compose_cfg(overrides, tmp_path)).status == "completed"


def test_an_interrupted_or_failed_forced_rerun_never_writes_over_a_completed_result(tmp_path, monkeypatch):
    import framework.trainer as trainer
    from framework.pipeline import run

    overrides = tiny_overrides() + ["trainer.epochs=1"]
    assert run(compose_cfg(overrides, tmp_path)).status == "completed"
    [path] = result_files(tmp_path)
    completed = path.read_text()
    for error in (KeyboardInterrupt, RuntimeError):
        def interrupted(*args, **kwargs):
            raise error("stopped")

        monkeypatch.setattr(trainer, "save_checkpoint", interrupted)
        with pytest.raises(error):
            run(compose_cfg(overrides + ["force=true"], tmp_path))
        assert path.read_text() == completed


def _glue_copy(root: Path) -> Path:
    folder = root / "data" / "SST-2"
    shutil.copytree(TEST_GLUE / "SST-2", folder)
    return folder


def test_resuming_on_changed_data_is_an_input_error_naming_the_file_and_force_starts_over(tmp_path, monkeypatch):
    import framework.trainer as trainer
    from framework.pipeline import InputError, run

    data = _glue_copy(tmp_path)
    overrides = [o for o in tiny_overrides() if not o.startswith("task.data_dir=")] + [f"task.data_dir={data}"]
    save = trainer.save_checkpoint

    def save_then_interrupt(state, path):
        save(state, path)
        raise KeyboardInterrupt  # killed just after epoch 1's checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "save_checkpoint", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run(compose_cfg(overrides, tmp_path))
    [checkpoint] = (tmp_path / "checkpoints").rglob(trainer.CHECKPOINT_FILE)
    train = data / "train.tsv"
    lines = train.read_text().splitlines(keepends=True)
    train.write_text("".join(lines + lines[-1:]))  # one more row: other data

    saved_epochs = []  # the epochs each checkpoint closes (0-based): what was trained

    def recording(state, path):
        saved_epochs.append(state["epoch"])
        save(state, path)

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    with pytest.raises(InputError, match=r"train\.tsv") as caught:
        run(compose_cfg(overrides, tmp_path))
    assert "force=true" in str(caught.value) and not saved_epochs and checkpoint.is_file()

    result = run(compose_cfg(overrides + ["force=true"], tmp_path))
    assert result.status == "completed" and len(result.epochs) == 2 and saved_epochs == [0, 1]  # from epoch 1
    assert str(train.resolve()) in result.provenance["data_files"]

