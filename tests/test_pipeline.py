"""End to end on the tiny model and the shipped few-row TSVs: train, select, test, record, resume, fail."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TEST_GLUE, compose_cfg, result_files, run_in, tiny_overrides

METHODS = ["c3a", "lora", "vera", "boft", "ia3", "bitfit", "full", "head"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_writes_a_valid_result(tmp_path, method):
    overrides = tiny_overrides("sst2", method) + ["trainer.epochs=1"]
    if method == "vera":
        overrides.append("method.r=16")
    result = run_in(tmp_path, overrides)
    [path] = result_files(tmp_path)
    data = json.loads(path.read_text())
    assert data["status"] == "completed" and data["method"] == method and data["seed"] == 0
    assert data["run_id"] == result.run_id and path.name == "seed0.json"
    for key in ("config", "epochs", "best_epoch", "best_val", "test_at_best", "test_last", "params", "memory",
                "timing", "provenance", "task_details", "method_label", "distributed"):
        assert data[key] not in (None, "", {}), key
    assert data["config"]["trainer"]["epochs"] == 1 and data["task_details"]["split"] == "holdout"
    assert data["distributed"] == {"num_processes": 1, "global_batch_size": 8, "per_device_batch_size": 8,
                                   "grad_accum_steps": 1, "optimizer_steps": data["distributed"]["optimizer_steps"],
                                   "steps_per_epoch": data["distributed"]["steps_per_epoch"], "mixed_precision": "no"}
    assert 0.0 <= data["test_at_best"]["accuracy"] <= 1.0
    assert data["memory"]["kind"] in ("cpu_peak_rss", "cuda") and data["memory"]["peak_bytes"] > 0
    params = data["params"]
    assert params["trainable_total"] == params["trainable_excl_head"] + params["head"]
    assert params["head"] > 0 and (params["trainable_excl_head"] > 0) == (method != "head")
    assert data["provenance"]["versions"]["torch"] == torch.__version__
    assert not list(tmp_path.rglob("*.tmp")), "atomic writes leave no temp files"


@pytest.mark.parametrize("test_every_epoch", [False, True])
def test_best_epoch_is_selected_on_validation_and_its_state_is_tested(tmp_path, monkeypatch, test_every_epoch):
    """Scripted validation scores: the peak at epoch 2 is chosen, and its test score is epoch 2's weights'."""
    import framework.trainer as train

    val_scores = iter([0.50, 0.90, 0.70])
    snapshots: dict[str, torch.Tensor] = {}

    def scripted_evaluate(accelerator, model, loader, task, processor):
        weights = torch.cat([p.detach().flatten().clone() for p in model.parameters() if p.requires_grad])
        if loader is scripted_evaluate.val_loader:
            epoch = len(snapshots) + 1
            snapshots[f"epoch{epoch}"] = weights
            return train.Evaluation({"accuracy": next(val_scores)}, [])
        scripted_evaluate.tested.append(weights)
        return train.Evaluation({"accuracy": float(len(scripted_evaluate.tested))}, [])

    scripted_evaluate.tested = []
    from accelerate import Accelerator

    original = Accelerator.prepare

    def prepare(self, *objects):
        prepared = original(self, *objects)
        scripted_evaluate.val_loader = prepared[3]
        return prepared

    monkeypatch.setattr(Accelerator, "prepare", prepare)
    monkeypatch.setattr(train, "evaluate", scripted_evaluate)
    result = run_in(tmp_path, tiny_overrides("sst2", "c3a") + ["trainer.epochs=3",
                                                             f"trainer.test_every_epoch={str(test_every_epoch).lower()}"])
    assert result.best_epoch == 2 and result.best_val == {"accuracy": 0.90}
    assert [e["val"]["accuracy"] for e in result.epochs] == [0.50, 0.90, 0.70]
    if test_every_epoch:  # each epoch scored test once; the reported scores are epoch 2's and epoch 3's
        assert len(scripted_evaluate.tested) == 3
        assert torch.equal(scripted_evaluate.tested[1], snapshots["epoch2"])
        assert result.test_at_best == {"accuracy": 2.0} and result.test_last == {"accuracy": 3.0}
    else:  # test_last on epoch 3's weights, then the best epoch's trainable state is loaded and tested
        assert len(scripted_evaluate.tested) == 2
        assert torch.equal(scripted_evaluate.tested[-1], snapshots["epoch2"])
        assert not torch.equal(scripted_evaluate.tested[-2], snapshots["epoch2"])
        assert result.test_at_best == {"accuracy": 2.0} and result.test_last == {"accuracy": 1.0}


class _Killed(BaseException):
    """Stands in for a kill right after a checkpoint was written."""


def test_resume_after_interrupt_equals_uninterruptedrun_in(tmp_path, monkeypatch):
    import framework.trainer as train

    overrides = tiny_overrides("sst2", "c3a") + ["trainer.epochs=3", "seed=3"]
    uninterrupted = run_in(tmp_path / "a", overrides)

    real_save = train.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if state["epoch"] == 1:  # after the second epoch's checkpoint
            raise _Killed()

    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run_in(tmp_path / "b", overrides)
    [failed] = result_files(tmp_path / "b")
    assert json.loads(failed.read_text())["status"] == "failed"
    [checkpoint] = (tmp_path / "b" / "checkpoints").rglob(train.CHECKPOINT_FILE)
    # resume state is data only: it loads with weights_only=True (a checkpoint can never run code)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    resumed = run_in(tmp_path / "b", overrides)
    for key in ("best_epoch", "best_val", "test_at_best", "test_last"):
        assert getattr(resumed, key) == getattr(uninterrupted, key), key
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in uninterrupted.epochs]
    assert resumed.run_id == uninterrupted.run_id


def test_completed_run_is_skipped_unless_forced(tmp_path, monkeypatch):
    import framework.trainer as train

    first = run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1"])

    def no_training(*args, **kwargs):
        raise AssertionError("a completed run must not train again")

    monkeypatch.setattr(train, "fit", no_training)
    again = run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1"])
    assert again.test_at_best == first.test_at_best
    with pytest.raises(AssertionError, match="must not train"):
        run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1", "force=true"])


def test_different_seed_or_setting_is_a_different_result_file(tmp_path):
    run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1"])
    run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1", "seed=1"])
    run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1", "trainer.lr_head=0.01"])
    paths = result_files(tmp_path)
    assert len(paths) == 3 and {p.name for p in paths} == {"seed0.json", "seed1.json"}


def test_nonfinite_loss_stops_with_a_failed_result(tmp_path, monkeypatch):
    from framework.tasks.glue import GlueTask
    from framework.trainer import NonFiniteLossError

    monkeypatch.setattr(GlueTask, "loss", lambda self, logits, labels: logits.sum() * math.nan)
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1"])
    [path] = result_files(tmp_path)
    data = json.loads(path.read_text())
    assert data["status"] == "failed" and "NonFiniteLossError" in data["error"]


@pytest.mark.parametrize("override,message", [
    (["method.b=5"], "valid"),                               # 5 does not divide the tiny model's 48
    (["task.data_dir=/nonexistent/RTE"], "/nonexistent/RTE"),
    (["method=lora", "method.r=0"], "r"),
])
def test_bad_input_fails_before_compute_without_a_result(tmp_path, override, message):
    from framework.pipeline import InputError

    with pytest.raises(InputError, match=message):
        run_in(tmp_path, tiny_overrides() + override)
    assert not result_files(tmp_path)


def test_malformed_tsv_is_reported_with_file_and_line(tmp_path):
    from framework.pipeline import InputError

    bad = tmp_path / "SST-2"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\ngood movie \t1\nbad movie \t7\n")
    (bad / "dev.tsv").write_text("sentence\tlabel\nfine \t1\n")
    with pytest.raises((InputError, ValueError), match="train.tsv"):
        run_in(tmp_path, tiny_overrides() + [f"task.data_dir={bad}"])
    assert not result_files(tmp_path)


@pytest.mark.parametrize("args,message", [
    (["method.b=5"], "valid"),
    (["trainer.epoch=3"], "epoch"),
    (["task=rtee"], "Available options"),
])
def test_cli_bad_input_exits_nonzero_with_a_clear_message(tmp_path, args, message):
    cmd = [sys.executable, str(ROOT / "run.py"), *tiny_overrides(), f"paths.root_dir={tmp_path}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not result_files(tmp_path)


def test_wandb_offline_mirror_is_written_and_finished(tmp_path):
    result = run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1", "tracker=wandb", "tracker.mode=offline",
                                                f"tracker.dir={tmp_path / 'wb'}"])
    assert result.status == "completed"
    runs = list((tmp_path / "wb").rglob("*.wandb"))
    assert runs, "an offline W&B run file is written"


def test_data_of_every_task_trains(tmp_path):
    """Pairs, no-header CoLA, regression STS-B: all six tasks run through the same loop."""
    for task in ("mrpc", "cola", "qnli", "rte", "stsb"):
        result = run_in(tmp_path, tiny_overrides(task, "c3a") + ["trainer.epochs=1", "method.b=1"])
        assert result.selection_metric in result.test_at_best
    assert len(result_files(tmp_path)) == 5
    assert (TEST_GLUE / "STS-B").exists()


def test_a_rerun_after_the_data_changed_is_refused_not_skipped(tmp_path):
    """The run id hashes the config, which names data by path: a changed file behind the same path must not
    return the old result as if it were this data's."""
    import shutil

    from framework.pipeline import InputError, run

    data = tmp_path / "SST-2"
    shutil.copytree(TEST_GLUE / "SST-2", data)
    overrides = [*tiny_overrides("sst2"), f"task.data_dir={data}", "trainer.epochs=1"]
    first = run(compose_cfg(overrides, tmp_path))
    recorded = first.provenance["data_files"]
    assert sorted(Path(p).name for p in recorded) == ["dev.tsv", "train.tsv"]
    assert run(compose_cfg(overrides, tmp_path)).timing == first.timing  # unchanged data: the stored result
    with open(data / "train.tsv", "a") as handle:
        handle.write("one more sentence\t1\n")
    with pytest.raises(InputError, match="contents have changed"):
        run(compose_cfg(overrides, tmp_path))
    again = run(compose_cfg([*overrides, "force=true"], tmp_path))
    assert again.run_id == first.run_id and again.provenance["data_files"] != recorded
