"""`make cost` (scripts/estimate_cost.py, its model in framework/cost.py): the Table 2 plan adds up, a measured step
replaces the FLOP model, bad flags fail before any compute. No step is measured here (--no-measure)."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import yaml

from conftest import ROOT
from framework import cost
from framework.paper_tables import load_spec

_spec = importlib.util.spec_from_file_location("estimate_cost", ROOT / "scripts" / "estimate_cost.py")
cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cli)

# public GLUE (train, dev) sizes, written again here so that framework/cost.py's copy is checked against them
GLUE = {"sst2": (67349, 872), "mrpc": (3668, 408), "cola": (8551, 1043), "qnli": (104743, 5463),
        "rte": (2490, 277), "stsb": (5749, 1500)}
STEP = ["--step-time-s", "0.5", "--step-batch", "64", "--step-length", "128", "--step-device", "test GPU",
        "--no-measure"]


@pytest.fixture(scope="module")
def plan():
    """The whole Table 2 plan: 96 Hydra composes and 16 meta-device models, built once for this file."""
    return cost.build_plan(load_spec(cli.TABLE))


def test_plan_covers_every_row_task_and_seed_and_totals_add_up(plan):
    spec = load_spec("table2")
    assert len(spec.rows) == 16 and spec.task_names == list(GLUE)
    assert [(j.preset, j.task) for j in plan] == [(r.preset, t) for r in spec.rows for t in spec.task_names]
    t = cost.totals(plan, cost.flop_model_throughput("a100-fp32", 0.4))
    assert t["all"]["runs"] == 16 * 6 * 5 and t["Base"]["runs"] == t["Large"]["runs"] == 8 * 6 * 5
    for key in ("runs", "steps", "tokens", "text_tokens", "flops", "eval_flops", "hours"):
        assert math.isclose(t["Base"][key] + t["Large"][key], t["all"][key])
    assert math.isclose(t["all"]["hours"], sum(cost.hours(j, cost.flop_model_throughput("a100-fp32", 0.4)) for j in plan))
    assert 0 < t["all"]["eval_flops"] < t["all"]["flops"] and 0 < t["all"]["text_tokens"] < t["all"]["tokens"]


def test_epochs_batches_examples_and_steps_follow_the_presets_and_the_holdout_split(plan):
    large = yaml.safe_load((ROOT / "conf" / "recipe" / "table2-large.yaml").read_text())["large_schedule"]
    for job in plan:
        n_train, n_dev = GLUE[job.task]
        val = min(1000, round(0.1 * n_train))
        assert (job.train, job.val, job.test) == (n_train - val, val, n_dev)
        if job.model_row == "Large":
            schedule = large[job.task]
        else:
            schedule = yaml.safe_load((ROOT / "conf" / "task" / f"{job.task}.yaml").read_text())["trainer"]
        assert (job.epochs, job.batch) == (schedule["epochs"], schedule["batch_size"]), job
        assert job.seeds == 5 and job.eval_batch == 128
        assert job.examples_per_run == job.epochs * job.train
        assert job.steps_per_run == job.epochs * math.ceil(job.train / job.batch)
        assert job.test_passes == job.epochs + 2  # every epoch (test_every_epoch), then last and best state
        train_tokens, _ = job.parts()["train"]
        assert train_tokens >= job.examples_per_run * cost.TOKEN_STATS[job.task]["train"][0]  # padding only adds


def test_flop_model_is_about_6n_for_full_fine_tuning_and_4n_for_a_frozen_backbone(plan):
    by_row = {j.preset: j.shape for j in plan}
    for size in ("base", "large"):
        full, lora = by_row[f"table2/{size}_full"], by_row[f"table2/{size}_lora"]
        assert full.trainable == full.params and lora.trainable < 0.02 * lora.params  # adapter + head
        assert full.train_flops_per_token(0) == 6 * full.params
        assert 1.45 < full.train_flops_per_token(64) / lora.train_flops_per_token(64) < 1.5
        assert full.eval_flops_per_token(0) == 2 * full.params
    assert 80e6 < by_row["table2/base_full"].params < 90e6  # RoBERTa-base without its 39M embedding parameters
    assert 300e6 < by_row["table2/large_full"].params < 310e6


def test_a_measured_step_replaces_the_flop_model(plan, tmp_path):
    args = cli.parse_args([*STEP, "--gpu", "h100-bf16", "--utilisation", "0.9"])
    rate = cli.throughput(args, plan)
    assert rate.source == "measured step" and rate.device == "test GPU"
    flop_model = cli.throughput(cli.parse_args(["--no-measure"]), plan)
    assert flop_model.source == "FLOP model" and rate.flops_per_s != flop_model.flops_per_s
    # the GPU and utilisation of the FLOP model no longer matter; the hours follow the step time
    same = cli.throughput(cli.parse_args(STEP), plan)
    slower = cli.throughput(cli.parse_args([*STEP[:1], "1.0", *STEP[2:]]), plan)
    assert same.flops_per_s == rate.flops_per_s
    hours = {name: cost.totals(plan, r)["all"]["hours"] for name, r in (("fast", rate), ("slow", slower))}
    assert math.isclose(hours["slow"], 2 * hours["fast"])
    # the step's own shape, unpadded: a run of k such steps would take k x 0.5 s
    c3a = next(j.shape for j in plan if j.preset == "table2/base_c3a_b6")
    assert math.isclose(64 * 128 * c3a.train_flops_per_token(128) / rate.flops_per_s, 0.5)
    report = cost.format_report(plan, rate)
    assert "time from: MEASURED STEP" in report and "hours on test GPU" in report
    # the same step as a JSON file gives the same rate
    step = {"step_time_s": 0.5, "batch_size": 64, "seq_len": 128, "row": "table2/base_c3a_b6", "device": "test GPU"}
    (tmp_path / "step.json").write_text(json.dumps(step))
    from_file = cli.throughput(cli.parse_args(["--step-json", str(tmp_path / "step.json"), "--no-measure"]), plan)
    assert from_file == rate


def test_padded_lengths_grow_with_the_batch_and_stop_at_the_measured_range():
    for task, parts in cost.TOKEN_STATS.items():
        for values in parts.values():
            assert len(values) == len(cost.PADDED_BATCHES) and list(values) == sorted(values)
        assert cost.padded_length(task, "train", 1) == parts["train"][0]
        low, high = cost.padded_length(task, "train", 64), cost.padded_length(task, "train", 128)
        assert low <= cost.padded_length(task, "train", 96) <= high
    with pytest.raises(cost.CostError, match="batch 1024 is outside"):
        cost.padded_length("rte", "train", 1024)


def _bad_json(tmp_path, **changes):
    step = {"step_time_s": 0.5, "batch_size": 64, "seq_len": 128, "row": "table2/base_c3a_b6", "device": "x"}
    step.update(changes)
    step = {k: v for k, v in step.items() if v is not None}
    (tmp_path / "step.json").write_text(json.dumps(step))
    return ["--step-json", str(tmp_path / "step.json"), "--no-measure"]


@pytest.mark.parametrize("argv, message", [
    (["--utilisation", "0"], "--utilisation 0.0 must be in (0, 1]"),
    (["--utilisation", "1.5"], "--utilisation 1.5 must be in (0, 1]"),
    (["--gpu", "a100"], "invalid choice: 'a100'"),
    (["--step-time-s", "0.5"], "go together; only ['step_time_s'] given"),
    (["--step-time-s", "-1", "--step-batch", "8", "--step-length", "128"], "step time -1.0 s must be a positive"),
    (["--step-time-s", "nan", "--step-batch", "8", "--step-length", "128"], "step time nan s must be a positive"),
    (["--step-time-s", "1", "--step-batch", "0", "--step-length", "128"], "batch_size=0 must be an integer >= 1"),
    (["--step-time-s", "1", "--step-batch", "8", "--step-length", "128", "--step-row", "table2/base_lorra",
      "--no-measure"], "step row 'table2/base_lorra' is not a row of table2"),
    (["--step-json", "nowhere.json"], "--step-json 'nowhere.json' does not exist"),
    (["--step-json", "x.json", "--step-time-s", "1", "--step-batch", "8", "--step-length", "9"], "either as"),
    (["--measure-batch", "0"], "--measure-batch 0 must be an integer >= 1"),
    (["--no-measure", "--write-step-json", "step.json"], "--write-step-json saves the step measured here"),
    ("missing seq_len", "lacks ['seq_len']"),
    ("text step time", "step_time_s='fast' is not a float"),
])
def test_bad_flags_exit_before_any_compute_with_a_clear_message(argv, message, tmp_path, capsys):
    if argv == "missing seq_len":
        argv = _bad_json(tmp_path, seq_len=None)
    elif argv == "text step time":
        argv = _bad_json(tmp_path, step_time_s="fast")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_measuring_on_cuda_without_a_gpu_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: --device cuda is valid here")
    with pytest.raises(SystemExit):
        cli.parse_args(["--device", "cuda"])
    assert "no CUDA device is visible here" in capsys.readouterr().err
