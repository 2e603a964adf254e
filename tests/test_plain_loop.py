"""scripts/plain_loop.py's bookkeeping (issue 15 §1): both test subsets come from the task's own rows, reruns
skip what a results file holds, and the table compares each setting with its method's run.py row."""
from __future__ import annotations

import json
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, TEST_GLUE, compose_cfg

sys.path.insert(0, str(ROOT / "scripts"))


def _tokenizer():
    from framework import models

    cfg = compose_cfg(["model=tiny-llama", "task=sst2"], ROOT / "outputs-unused")
    return models.build_processor(OmegaConf.to_container(cfg.model, resolve=True), "tokenizer")


def test_subsets_are_the_tasks_seeded_rows_and_the_files_first_rows():
    import plain_loop
    from framework.tasks.instruct import InstructTask

    tokenizer = _tokenizer()
    task = InstructTask("sst2-instruct", data_dir=str(TEST_GLUE / "SST-2"), template="alpaca",
                        train={"format": "sst2-instruct", "path": "train.tsv"},
                        test={"sst2": {"format": "sst2-instruct", "path": "dev.tsv"}},
                        val_size=2, max_eval_samples=4, max_length=128, max_new_tokens=4)
    splits = task.splits(tokenizer)
    rows, subsets = plain_loop.test_subsets(task, tokenizer, count=3)
    assert subsets["first"] == {0, 1, 2} and len(subsets["seeded"]) == 4
    prompt = {int(r["set"]): r["prompt_ids"].tolist() for r in rows}
    assert set(prompt) == subsets["first"] | subsets["seeded"]
    # the seeded subset is exactly what run.py scores (same prompts), the first rows are the file's first rows
    assert sorted(prompt[i] for i in subsets["seeded"]) == sorted(r["prompt_ids"].tolist() for r in splits["test"])
    first_examples = task.examples("test/sst2")[:3]
    assert sorted(prompt[i] for i in range(3)) == sorted(r["prompt_ids"].tolist()
                                                         for r in task.eval_rows(first_examples, ["x"] * 3, tokenizer))
    with pytest.raises(ValueError, match=r"'test/dev' is not one of \['test/sst2', 'train'\]"):
        task.examples("test/dev")


def _record(method, side, seed, accuracy, **changes):
    base = {"method": method, "side": side, "seed": seed, "clip": None, "answer": "sentence", "eos": True,
            "padding": "right", "overrides": [], "train_subset": "seeded", "train_rows": 512, "test_rows": 200,
            "batch_size": 8, "test_accuracy": accuracy, "train_s": 100.0}
    if side == "plain":
        base["test_accuracy_first_rows"] = accuracy - 1
    return {**base, **changes}


def test_table_compares_each_setting_with_its_methods_run_py_row(tmp_path):
    import plain_loop_table

    records = [_record(m, side, s, acc + s) for m, acc in (("c3a", 80.0), ("lora", 60.0))
               for side in ("runpy", "plain") for s in range(3)]
    records.append(_record("c3a", "plain", 0, 90.0, answer="word", padding="left"))
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = plain_loop_table.table(plain_loop_table.load([path])).splitlines()
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in lines[2:]}
    assert set(rows) == {("c3a", "run.py"), ("c3a", "plain loop"), ("c3a", "plain loop: answer word, left padding"),
                         ("lora", "run.py"), ("lora", "plain loop")}
    assert "| 81.0 ± 1.0 | — |" in rows[("c3a", "run.py")]
    # identical seeds: paired difference 0, with a CI (3 seeds each side)
    assert "| run.py | +0.00 (seeds 0, 1, 2) | [" in rows[("c3a", "plain loop")]
    changed = rows[("c3a", "plain loop: answer word, left padding")]
    assert "| plain loop | +10.00 (seeds 0) | no CI: only 1 seed" in changed  # paired with the plain loop's seed 0
    assert "| 89.0 |" in changed  # the first-rows column


def test_the_table_refuses_one_run_given_twice(tmp_path):
    import plain_loop_table

    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(_record("c3a", "plain", seed, 80.0)) + "\n" for seed in (0, 1, 0)))
    with pytest.raises(SystemExit, match="c3a / plain loop / seed 0. Keep one line each"):
        plain_loop_table.load([path])


def test_a_rerun_skips_the_seeds_its_results_file_holds(tmp_path, capsys):
    import plain_loop

    out = tmp_path / "runs.jsonl"
    out.write_text(json.dumps(_record("c3a", "plain", 0, 80.0) | {"train_rows": 512}) + "\n")
    # seed 0 is in the file: nothing is built or trained (a run would need the GLUE folder, which is absent)
    assert plain_loop.main(["--method", "c3a", "--seeds", "0", "--out", str(out),
                            "--data-dir", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 1


def test_plain_only_settings_are_refused_on_the_run_py_side(tmp_path, capsys):
    import plain_loop

    with pytest.raises(SystemExit):
        plain_loop.main(["--method", "c3a", "--side", "runpy", "--no-eos", "--padding", "left",
                         "--data-dir", str(tmp_path / "absent")])
    assert "--no-eos, --padding: plain side only" in capsys.readouterr().err


def test_without_eos_drops_only_a_final_eos():
    import numpy as np

    import plain_loop

    ended = {"input_ids": np.array([5, 6, 7, 2]), "labels": np.array([-100, -100, 7, 2])}
    cut = {"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, -100, 7])}  # cut at max_length: no EOS
    rows = plain_loop.without_eos([ended, cut], eos_id=2)
    assert rows[0]["input_ids"].tolist() == [5, 6, 7] and rows[0]["labels"].tolist() == [-100, -100, 7]
    assert rows[1]["input_ids"].tolist() == [5, 6, 7]


def test_a_changed_run_py_setting_is_compared_with_run_py(tmp_path):
    import plain_loop_table

    records = [_record("lora", side, s, 60.0 + s) for side in ("runpy", "plain") for s in range(3)]
    records += [_record("lora", "runpy", s, 70.0 + s, answer="word") for s in range(3)]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = plain_loop_table.table(plain_loop_table.load([path])).splitlines()[2:]
    assert [line.split("|")[2].strip() for line in lines] == ["run.py", "run.py: answer word", "plain loop"]
    assert "| run.py | +10.00 (seeds 0, 1, 2) |" in lines[1]
