"""The trainer and pipeline guards that a plausible one-line bug would break (each test fails on that bug).

Selection with a NaN first score, evaluation in eval mode, atomic result writes, a tracker that fails
after the result is written, a bug's TypeError, bad trainer settings before any compute, a sequence
length beyond the position embeddings, and the global-batch semantics of accumulation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import result_files, run_in, tiny_overrides


def test_a_nan_first_validation_score_never_stands_as_best(tmp_path, monkeypatch):
    import framework.trainer as trainer

    scores = iter([math.nan, 0.8, 0.9] + [0.5] * 10)
    monkeypatch.setattr(trainer, "evaluate", lambda accelerator, model, loader, task, processor:
                        trainer.Evaluation({"accuracy": next(scores)}, []))
    result = run_in(tmp_path, tiny_overrides() + ["trainer.epochs=3", "trainer.test_every_epoch=false"])
    assert result.best_epoch == 3 and result.best_val == {"accuracy": 0.9}


class _SumOfLogits:
    """A task whose metric is the sum of the model's logits on fixed inputs (no dropout → identical)."""

    selection_metric = "sum"

    def eval_step(self, model, batch, processor):
        assert not torch.is_grad_enabled(), "evaluation runs without gradients"
        return model(input_ids=batch).logits.double()

    def metrics(self, outputs):
        return {"sum": torch.cat(outputs).sum().item()}


def test_evaluation_is_in_eval_mode_so_two_evaluations_agree():
    from accelerate import Accelerator
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from framework.trainer import evaluate

    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5))
    model.train()  # as the trainer leaves it after an epoch
    accelerator = Accelerator(cpu=True)
    batches = [torch.arange(3, 19).reshape(2, 8)]
    first = evaluate(accelerator, model, batches, _SumOfLogits(), None)
    second = evaluate(accelerator, model, batches, _SumOfLogits(), None)
    assert first.metrics == second.metrics and not model.training


def test_a_result_write_that_fails_halfway_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    import framework.io as io
    from framework.results import RunResult, load_result, write_result

    path = tmp_path / "seed0.json"
    old = RunResult(run_id="t/m/x/h/seed0", status="completed", model="m", method="x", task="t", seed=0, config={})
    write_result(path, old)

    def disk_full(fd):
        raise OSError("No space left on device")

    monkeypatch.setattr(io.os, "fsync", disk_full)  # the new text is written, then the write fails
    new = RunResult(run_id="t/m/x/h/seed0", status="failed", model="m", method="x", task="t", seed=0, config={})
    with pytest.raises(OSError, match="No space"):
        write_result(path, new)
    assert load_result(path).status == "completed"
    assert [p.name for p in tmp_path.iterdir()] == ["seed0.json"], "no temp file is left behind"


def test_a_tracker_failing_after_the_result_is_written_never_marks_it_failed(tmp_path, monkeypatch):
    from framework.trackers import NullTracker

    def broken(self, *args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(NullTracker, "summary", broken)
    monkeypatch.setattr(NullTracker, "finish", broken)
    result = run_in(tmp_path, tiny_overrides() + ["trainer.epochs=1"])
    [path] = result_files(tmp_path)
    assert result.status == "completed" and json.loads(path.read_text())["status"] == "completed"


def test_a_bug_in_preparation_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    from framework.pipeline import InputError
    from framework.tasks.glue import GlueTask

    def buggy(self):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(GlueTask, "check_data", buggy)
    with pytest.raises(TypeError) as caught:
        run_in(tmp_path, tiny_overrides())
    assert not isinstance(caught.value, InputError)


@pytest.mark.parametrize("override,message", [
    ("trainer.lr_adapter=-1", "lr_adapter=-1"),
    ("trainer.warmup_ratio=2", "warmup_ratio=2"),
    ("trainer.epochs=-1", "epochs=-1"),
    ("trainer.grad_accum_steps=0", "grad_accum_steps=0"),
    ("trainer.batch_size=0", "batch_size=0"),
    ("trainer.scheduler=bogus", "'bogus' is not one of"),
    ("trainer.mixed_precision=fp8", "'fp8' is not one of"),
    ("trainer.batch_size=6 trainer.grad_accum_steps=4", "multiple of 4"),
    ("seed=abc", "seed='abc'"),
    ("task.max_length=512", "129 positions"),  # tiny-roberta: 130 position embeddings from padding index 0 + 1
])
def test_bad_settings_fail_before_the_model_is_built_and_leave_no_result(tmp_path, monkeypatch, override, message):
    import framework.models as models
    from framework.pipeline import InputError

    real_build = models.build_model

    def only_skeletons(model_cfg, kind, head, weights="pretrained"):
        assert weights == "meta", "bad input must be found before any real model is built"
        return real_build(model_cfg, kind, head, weights)

    monkeypatch.setattr(models, "build_model", only_skeletons)
    overrides = [o for o in tiny_overrides() if not o.startswith("task.max_length")] + override.split()
    with pytest.raises(InputError, match=message):
        run_in(tmp_path, overrides)
    assert not result_files(tmp_path)


def test_batch_size_is_the_global_batch_of_one_update(tmp_path):
    """Accumulation splits the configured batch: same updates, same schedule, quarter-size forward passes."""
    plain = run_in(tmp_path / "a", tiny_overrides() + ["trainer.epochs=2"])
    accumulated = run_in(tmp_path / "b", tiny_overrides() + ["trainer.epochs=2", "trainer.grad_accum_steps=4"])
    assert accumulated.distributed["per_device_batch_size"] == 2 and plain.distributed["per_device_batch_size"] == 8
    assert accumulated.distributed["optimizer_steps"] == plain.distributed["optimizer_steps"]
    assert [e["lr"] for e in accumulated.epochs] == [e["lr"] for e in plain.epochs]


def test_generations_come_from_the_best_epoch_not_the_last(tmp_path, monkeypatch):
    """test_every_epoch=true and epoch 1 of 2 the best: generations.jsonl holds epoch 1's test generations, the
    state its test score comes from (issue 14 §5: it held the last epoch's)."""
    from conftest import TEST_GLUE
    from framework.tasks.instruct import InstructTask

    passes = {"epoch": 0, "last": None}

    def generate(self, model, batch, tokenizer):
        kind = "val" if set(batch["set"]) == {"val"} else "test"
        if kind == "val" and passes["last"] != "val":
            passes["epoch"] += 1
        passes["last"] = kind
        if kind == "val":  # right answers in epoch 1 only: epoch 1 is the best
            return [ref if passes["epoch"] == 1 else "neither" for ref in batch["reference"]]
        return [f"epoch {passes['epoch']}"] * len(batch["set"])

    monkeypatch.setattr(InstructTask, "generate", generate)
    result = run_in(tmp_path, ["method=lora", "model=tiny-llama", "task=sst2-instruct",
                             f"task.data_dir={TEST_GLUE / 'SST-2'}", "task.template=alpaca", "task.val_size=4",
                             "tracker=none", "trainer.epochs=2", "trainer.batch_size=4", "trainer.eval_batch_size=8",
                             "trainer.progress_bar=false", "trainer.test_every_epoch=true",
                             "method.target_modules=${model.targets.instruct}"])
    assert result.best_epoch == 1 and [e["val"]["score"] for e in result.epochs] == [1.0, 0.0]
    generations = [json.loads(line) for line in Path(result.artifacts["generations"]).read_text().splitlines()]
    assert generations and {g["generation"] for g in generations} == {"epoch 1"}


@pytest.mark.parametrize("method", ["c3a", "head"])
def test_zero_epochs_on_a_new_head_is_refused_before_compute(tmp_path, monkeypatch, method):
    """A method that trains, a task with a fresh classifier and trainer.epochs=0 would score random head weights
    as a result: refused as method=zero_shot refuses it."""
    import framework.trainer as trainer
    from framework.pipeline import InputError

    def no_compute(*args, **kwargs):
        raise AssertionError("the run reached the trainer")

    monkeypatch.setattr(trainer, "fit", no_compute)
    with pytest.raises(InputError, match="trainer.epochs=0 .* random"):
        run_in(tmp_path, tiny_overrides(method=method) + ["trainer.epochs=0"])
    assert not result_files(tmp_path)
