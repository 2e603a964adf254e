"""The causal-LM instruction task: answer-only loss, left-padded batched generation, the data discipline,
scoring, runs through the pipeline (tiny config-built Llama, LLaMA tokenizer from the tinycoder GGUF),
the Table 3/4 presets, zero-shot evaluation and the GGUF conversion cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import CONF, ROOT, TEST_GLUE, compose_cfg
from framework.tasks.instruct import IGNORE, InstructTask

DATA = ROOT / "data" / "instruct"
MATH = {"train": {"format": "metamathqa", "path": str(DATA / "math" / "metamathqa.json")},
        "test": {"gsm8k": {"format": "gsm8k", "path": str(DATA / "math" / "gsm8k_test.jsonl")},
                 "math": {"format": "math", "path": str(DATA / "math" / "math_test.jsonl")}}}


def evaluate(task, model, loader, tokenizer):
    """The trainer's evaluation of one split on one process (metrics and gathered outputs)."""
    from framework.trainer import evaluate

    return evaluate(IdentityAccelerator(), model, loader, task, tokenizer)


class IdentityAccelerator:
    """One process: gathering returns its input, the model is not wrapped."""

    def unwrap_model(self, model):
        return model

    def gather_for_metrics(self, data):
        return data


def model_entry(name: str = "tiny-llama") -> dict:
    cfg = compose_cfg([f"model={name}", "task=sst2"], ROOT / "outputs-unused")
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture(scope="module")
def tokenizer():
    from framework import models

    return models.build_processor(model_entry(), "tokenizer")


@pytest.fixture(scope="module")
def tiny_llama(tokenizer):
    from framework import models

    torch.manual_seed(0)
    return models.build_model(model_entry(), "causal-lm", models.Head(trains=False)).eval()


def math_task(**overrides) -> InstructTask:
    return InstructTask("math", **{**MATH, "val_size": 2, "max_new_tokens": 6, **overrides})


# ----------------------------------------------------------------------------------- masking
def test_loss_covers_the_answer_tokens_only(tokenizer):
    task = math_task()
    splits = task.splits(tokenizer)
    assert tokenizer.pad_token is not None and task.describe()["pad_token_set_to"] == tokenizer.eos_token
    by_target = {e.target: e for e in task.examples("train")}
    for row in splits["train"]:
        answer = row["labels"] != IGNORE
        first = int(np.argmax(answer))
        assert not answer[:first].any() and answer[first:].all()       # prompt masked, answer kept
        assert np.array_equal(row["labels"][first:], row["input_ids"][first:])
        assert row["input_ids"][-1] == tokenizer.eos_token_id             # the answer ends with EOS
        prompt = tokenizer.decode(row["input_ids"][:first])
        assert prompt.endswith("### Response:\n") and "Below is an instruction" in prompt
        assert tokenizer.decode(row["input_ids"][first:-1]).strip() in by_target
    batch = task.collate(tokenizer, "train")([splits["train"][i] for i in range(3)])
    lengths = [len(splits["train"][i]["input_ids"]) for i in range(3)]
    assert batch["attention_mask"].sum(1).tolist() == lengths                  # right padding
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()     # padding never in the loss


def test_the_model_loss_is_the_mean_over_answer_tokens(tokenizer, tiny_llama):
    task = math_task()
    splits = task.splits(tokenizer)
    batch = task.collate(tokenizer, "train")([splits["train"][i] for i in range(2)])
    loss = task.training_loss(tiny_llama, batch)
    logits = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=IGNORE)
    torch.testing.assert_close(loss, expected)


def test_truncation_and_dropped_rows_are_counted(tokenizer):
    prompts = sorted(int(np.argmax(r["labels"] != IGNORE)) for r in math_task().splits(tokenizer)["train"])
    limit = prompts[0] + 3  # the shortest prompt keeps 3 answer tokens; longer prompts leave no room
    task = math_task(max_length=limit)
    splits = task.splits(tokenizer)
    stats = task.describe()["train_rows"]
    assert stats["truncated"] == len(splits["train"]) >= 1
    assert stats["dropped_prompt_too_long"] == sum(p >= limit for p in prompts) >= 1
    assert all(len(r["input_ids"]) <= limit for r in splits["train"])
    with pytest.raises(ValueError, match="longer than task.max_length"):
        math_task(max_length=5).splits(tokenizer)


# ------------------------------------------------------------------------------- generation
def test_left_padded_batched_generation_equals_unbatched(tokenizer, tiny_llama):
    task = InstructTask("commonsense", train={"format": "commonsense", "path": "ft-training_set/commonsense_170k.json"},
                        test={"boolq": {"format": "commonsense", "path": "dataset/boolq/test.json"},
                              "hellaswag": {"format": "commonsense", "path": "dataset/hellaswag/test.json"}},
                        data_dir=str(DATA / "commonsense"), val_size=2, max_new_tokens=8)
    rows = list(task.splits(tokenizer)["test"])
    lengths = {len(r["prompt_ids"]) for r in rows}
    assert len(lengths) > 1, "the check needs prompts of different lengths"
    collate = task.collate(tokenizer, "test")
    batch = collate(rows)
    assert (batch["attention_mask"][:, -1] == 1).all()                    # left padding: prompts end together
    with torch.no_grad():
        together = task.generate(tiny_llama, batch, tokenizer)
        alone = [task.generate(tiny_llama, collate([row]), tokenizer)[0] for row in rows]
    assert together == alone
    assert all(text for text in together)


def test_scoring_follows_each_source_rule(tokenizer):
    task = math_task()
    rows = list(task.splits(tokenizer)["test"])
    batch = task.collate(tokenizer, "test")(rows)
    right = [f"The answer is: {ref}" for ref in batch["reference"]]
    assert task.score(right, batch) == [{"base": True}] * len(rows)
    assert task.score(["The answer is: 999999"] * len(rows), batch) == [{"base": False}] * len(rows)


def test_evaluate_reports_each_test_set_and_their_mean(tokenizer, tiny_llama):
    task = math_task()
    splits = task.splits(tokenizer)
    loader = torch.utils.data.DataLoader(splits["test"], batch_size=4, collate_fn=task.collate(tokenizer, "test"))
    with torch.no_grad():
        scored = evaluate(task, tiny_llama, loader, tokenizer)
    metrics = scored.metrics
    assert set(metrics) == {"gsm8k", "math", "score"}
    assert metrics["score"] == pytest.approx((metrics["gsm8k"] + metrics["math"]) / 2)
    assert len(task.samples(scored.outputs)) == len(splits["test"])
    val_loader = torch.utils.data.DataLoader(splits["val"], batch_size=4, collate_fn=task.collate(tokenizer, "val"))
    with torch.no_grad():
        assert set(evaluate(task, tiny_llama, val_loader, tokenizer).metrics) == {"score", "accuracy"}


def test_loss_selection_for_sources_without_a_score(tokenizer, tiny_llama):
    code = DATA / "code"
    task = InstructTask("code", train={"format": "magicoder", "path": str(code / "magicoder.jsonl")},
                        test={"mbpp": {"format": "mbpp", "path": str(code / "mbpp.jsonl")}},
                        template="magicoder", val_metric="loss", val_size=2)
    splits = task.splits(tokenizer)
    loader = torch.utils.data.DataLoader(splits["val"], batch_size=2, collate_fn=task.collate(tokenizer, "val"))
    with torch.no_grad():
        metrics = evaluate(task, tiny_llama, loader, tokenizer).metrics
        batch = task.collate(tokenizer, "train")(list(splits["val"]))
        expected = task.training_loss(tiny_llama, batch).item()
    assert metrics["score"] == -metrics["loss"] and metrics["loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="val_metric=loss"):
        InstructTask("code", train=task.train_source, test=task.test_sources, val_size=2).check_data()


def code_task(**kwargs) -> InstructTask:
    code = DATA / "code"
    return InstructTask("code", train={"format": "magicoder", "path": str(code / "magicoder.jsonl")}, test={
        "humaneval": {"format": "humaneval", "path": str(code / "humaneval.jsonl"),
                      "plus": {"path": str(code / "humanevalplus.jsonl")}},
        "mbpp": {"format": "mbpp", "path": str(code / "mbppplus.jsonl")}},
        template="magicoder", val_metric="loss", val_size=2, **kwargs)


def test_evalplus_scores_one_generation_against_base_and_plus_tests(tokenizer):
    """Canonical solutions pass both suites; a solution that memorises the base tests passes base only
    (the point of HumanEval+/MBPP+); a wrong one passes neither; plus never counts where base fails."""
    task = code_task()
    rows = list(task.splits(tokenizer)["test"])
    batch = task.collate(tokenizer, "test")(rows)
    assert all(ref["plus_test"] for ref in batch["reference"])
    canonical = {r.reference["task_id"]: r.target for r in task.examples("test/humaneval") + task.examples("test/mbpp")}
    memorised = {"Sample/0": "def add(a, b):\n    return {(2, 3): 5, (-1, 1): 0}[(a, b)]",
                 "Sample/1": "def total(xs):\n    return sum(x for x in xs if x > 0)",
                 3: "def factorial(n):\n    return {5: 120, 0: 1}[n]",
                 4: "def hypotenuse(a, b):\n    return {(3, 4): 5.0, (6, 8): 10.0}[(a, b)]"}
    ids = [ref["task_id"] for ref in batch["reference"]]
    assert task.score([canonical[i] for i in ids], batch) == [{"base": True, "plus": True}] * len(ids)
    assert task.score([f"```python\n{memorised[i]}\n```" for i in ids], batch) == [{"base": True, "plus": False}] * len(ids)
    assert task.score(["def nothing():\n    pass"] * len(ids), batch) == [{"base": False, "plus": False}] * len(ids)


def test_evaluate_reports_the_four_code_columns_and_their_mean(tokenizer, tiny_llama):
    task = code_task(max_new_tokens=2)
    splits = task.splits(tokenizer)
    loader = torch.utils.data.DataLoader(splits["test"], batch_size=4, collate_fn=task.collate(tokenizer, "test"))
    with torch.no_grad():
        scored = evaluate(task, tiny_llama, loader, tokenizer)
    metrics = scored.metrics
    columns = {"humaneval", "humaneval_plus", "mbpp", "mbpp_plus"}
    assert set(metrics) == columns | {"score"}
    assert metrics["score"] == pytest.approx(np.mean([metrics[c] for c in columns]))
    assert {"correct", "correct_plus", "generation", "set"} <= set(task.samples(scored.outputs)[0])


@pytest.mark.parametrize("plus,message", [
    ({"path": str(DATA / "code" / "humaneval.jsonl"), "hub": "x"}, "exactly one of path"),
    ({"path": str(DATA / "code" / "mbppplus.jsonl")}, r"missing \['test'\]|must define check"),
])
def test_a_bad_plus_source_fails_before_compute(plus, message):
    task = code_task()
    task.test_sources["humaneval"] = {**task.test_sources["humaneval"], "plus": plus}
    with pytest.raises(ValueError, match=message):
        task.validate()
        task.check_data()


def test_a_plus_source_must_cover_every_problem(tmp_path):
    one = tmp_path / "plus.jsonl"
    one.write_text((DATA / "code" / "humanevalplus.jsonl").read_text().splitlines()[0] + "\n")
    task = code_task()
    task.test_sources["humaneval"] = {**task.test_sources["humaneval"], "plus": {"path": str(one)}}
    with pytest.raises(ValueError, match=r"no tests for 1 of the 2 problems, e.g. \['Sample/1'\]"):
        task.check_data()


def test_tokenised_training_rows_are_cached_and_keyed_by_what_decides_them(tokenizer, tmp_path):
    first = math_task(cache_dir=tmp_path)
    rows = first.splits(tokenizer)["train"].rows
    assert first.describe()["tokenized_cache"]["hit"] is False
    again = math_task(cache_dir=tmp_path)
    cached = again.splits(tokenizer)["train"].rows
    assert again.describe()["tokenized_cache"] == {**first.describe()["tokenized_cache"], "hit": True}
    assert [(r["input_ids"].tolist(), r["labels"].tolist()) for r in cached] == \
           [(r["input_ids"].tolist(), r["labels"].tolist()) for r in rows]
    assert again.describe()["train_rows"] == first.describe()["train_rows"]
    for changed in ({"max_length": 64}, {"template": "chat"}, {"instruction_suffix": "Think."}, {"split_seed": 3}):
        other = math_task(cache_dir=tmp_path, **changed)
        if changed.get("template") == "chat" and not getattr(tokenizer, "chat_template", None):
            continue
        other.splits(tokenizer)
        assert other.describe()["tokenized_cache"]["hit"] is False, changed


# ------------------------------------------------------------------------------ data discipline
def test_val_is_a_slice_of_train_and_test_sets_stay_apart(tokenizer):
    task = InstructTask("commonsense", train={"format": "commonsense", "path": "ft-training_set/commonsense_170k.json"},
                        test={"boolq": {"format": "commonsense", "path": "dataset/boolq/test.json"}},
                        data_dir=str(DATA / "commonsense"), val_size=3, split_seed=1)
    splits = task.splits(tokenizer)
    val_prompts = {tuple(r["prompt_ids"]) for r in splits["val"]}
    train_prompts = {tuple(r["input_ids"][:int(np.argmax(r["labels"] != IGNORE))]) for r in splits["train"]}
    assert len(val_prompts) == 3 and not val_prompts & train_prompts
    assert len(val_prompts | train_prompts) == len(task.examples("train"))
    assert {r["set"] for r in splits["val"]} == {"val"} and {r["set"] for r in splits["test"]} == {"boolq"}
    info = task.describe()
    assert info["sizes"] == {"train": 5, "val": 3, "test": 2} and "never used for selection" in info["split"]
    again = InstructTask(**{k: getattr(task, k) for k in ("name", "data_dir")}, train=task.train_source,
                         test=task.test_sources, val_size=3, split_seed=1).splits(tokenizer)
    assert [tuple(r["prompt_ids"]) for r in again["val"]] == [tuple(r["prompt_ids"]) for r in splits["val"]]


@pytest.mark.parametrize("overrides,message", [
    ({"template": "vicuna"}, "template"),
    ({"val_metric": "bleu"}, "val_metric"),
    ({"val_size": 0}, "val_size"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"test": {}}, "no test set"),
    ({"train": {"format": "metamathqa", "path": "/no/such/file.json"}}, "does not exist"),
    ({"train": {"format": "alpaca", "path": "x"}}, "format"),
    ({"train": {"format": "metamathqa", "path": "x", "hub": "y"}}, "exactly one of path"),
])
def test_bad_settings_fail_before_compute(overrides, message):
    with pytest.raises(ValueError if "exist" not in message else FileNotFoundError, match=message):
        math_task(**overrides)


def test_malformed_rows_name_the_file_and_keys(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n")
    task = math_task(train={"format": "gsm8k", "path": str(bad)})
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1.*missing \['answer'\]"):
        task.check_data()


@pytest.mark.parametrize("name,folder,keywords", [("sst2", "SST-2", ("positive", "negative")),
                                                   ("rte", "RTE", ("true", "false"))])
def test_glue_as_instructions(name, folder, keywords):
    task = InstructTask(f"{name}-instruct", train={"format": f"{name}-instruct", "path": "train.tsv"},
                        test={name: {"format": f"{name}-instruct", "path": "dev.tsv"}},
                        data_dir=str(TEST_GLUE / folder), val_size=4)
    task.check_data()
    for example in task.examples("train"):
        assert example.keywords == keywords and example.reference in keywords
        assert example.target == f"the correct answer is {example.reference}"
        assert f"Answer format: {keywords[0]}/{keywords[1]}" in example.instruction
    assert {e.reference for e in task.examples("train")} == set(keywords)  # both labels occur


def test_glue_instructions_train_on_the_word_alone_when_asked():
    def task(answer):
        return InstructTask("sst2-instruct", train={"format": "sst2-instruct", "path": "train.tsv", "answer": answer},
                            test={"sst2": {"format": "sst2-instruct", "path": "dev.tsv"}},
                            data_dir=str(TEST_GLUE / "SST-2"), val_size=4)

    sentence, word = task("sentence").examples("train"), task("word").examples("train")
    assert [e.target for e in word] == [e.reference for e in word]
    assert [e.target for e in sentence] == [f"the correct answer is {e.reference}" for e in word]
    # only the target changes: same instructions, references and keywords, so the same rows are scored
    assert [(e.instruction, e.reference, e.keywords) for e in word] == [
        (e.instruction, e.reference, e.keywords) for e in sentence]


@pytest.mark.parametrize("source,message", [
    ({"format": "sst2-instruct", "path": "train.tsv", "answer": "letter"},
     r"task.train.answer='letter' is not one of \['sentence', 'word'\]"),
    ({"format": "gsm8k", "path": "train.tsv", "answer": "word"},
     r"task.train.answer: only the GLUE-made formats \['rte-instruct', 'sst2-instruct'\] write their own target"),
])
def test_a_bad_answer_format_is_refused_when_the_task_is_built(source, message):
    with pytest.raises(ValueError, match=message):
        InstructTask("sst2-instruct", train=source, test={"sst2": {"format": "sst2-instruct", "path": "dev.tsv"}},
                     data_dir=str(TEST_GLUE / "SST-2"), val_size=4)


# --------------------------------------------------------------------------------- full runs
def instruct_overrides(method: str) -> list[str]:
    return [f"method={method}", "model=tiny-llama", "task=sst2-instruct", f"task.data_dir={TEST_GLUE / 'SST-2'}",
            "task.template=alpaca", "task.val_size=4", "task.max_new_tokens=4", "tracker=none",
            "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.progress_bar=false",
            "method.target_modules=${model.targets.instruct}"]


@pytest.mark.parametrize("method,extra", [("c3a", ["method.b=null", "method.block_size=64"]), ("lora", [])])
def test_pipeline_runs_an_instruction_task(tmp_path, method, extra):
    from framework.pipeline import run

    result = run(compose_cfg(instruct_overrides(method) + extra, tmp_path))
    assert result.status == "completed"
    assert set(result.test_at_best) == {"sst2", "score"} and set(result.best_val) == {"score", "accuracy"}
    assert result.params["head"] == 0 and result.params["trainable_excl_head"] > 0
    assert result.task_details["sizes"] == {"train": 16, "val": 4, "test": 10}
    assert Path(result.artifacts["generations"]).is_file()


PRESETS = sorted(str(p.relative_to(CONF / "experiment").with_suffix(""))
                 for d in ("table3", "table4") for p in (CONF / "experiment" / d).glob("*.yaml"))
# one step of every preset takes minutes on 2 cores: `make test` runs one per table and method family
# (C3A on Table 3, LoRA on Table 4), `make test-all` runs them all
FAST_PRESETS = ("table3/llama2_c3a", "table4/llama3_lora", "table4/llama2_zero_shot")


def preset_data(preset: str, task: str) -> list[str]:
    if task == "commonsense":
        return [f"task.data_dir={DATA / 'commonsense'}"]
    train = {"math": ["task.train.hub=null", f"task.train.path={DATA / 'math' / 'metamathqa.json'}"],
             "code": ["task.train.hub=null", f"task.train.path={DATA / 'code' / 'magicoder.jsonl'}"]}[task]
    return ([] if preset.endswith("zero_shot") else train) + eval_data(task)


def eval_data(task: str) -> list[str]:
    if task == "math":
        return ["task.test.gsm8k.hub=null", f"task.test.gsm8k.path={DATA / 'math' / 'gsm8k_test.jsonl'}",
                f"task.test.math.path={DATA / 'math' / 'math_test.jsonl'}"]
    return [f"task.test.humaneval.path={DATA / 'code' / 'humaneval.jsonl'}", "task.test.humaneval.plus.hub=null",
            f"task.test.humaneval.plus.path={DATA / 'code' / 'humanevalplus.jsonl'}",
            "task.test.mbpp.hub=null", f"task.test.mbpp.path={DATA / 'code' / 'mbppplus.jsonl'}"]


@pytest.mark.parametrize("index,preset", [
    pytest.param(i, p, marks=() if p in FAST_PRESETS else pytest.mark.slow) for i, p in enumerate(PRESETS)])
def test_table_presets_compose_and_run_one_step(tmp_path, index, preset):
    from framework.pipeline import run

    task = "commonsense" if preset.startswith("table3") else ("math", "code")[index % 2]
    if preset.endswith("zero_shot"):  # one zero-shot row per task
        task = "code" if preset.startswith("table4/llama2") else "math"
    cfg = compose_cfg([f"experiment={preset}", "model=tiny-llama", f"task={task}", *preset_data(preset, task),
                       "task.val_size=2", "task.max_length=128", "task.max_new_tokens=4", "debug=fast",
                       "trainer.max_steps_per_epoch=1", "trainer.test_every_epoch=false",
                       *(["trainer.epochs=0"] if preset.endswith("zero_shot") else [])], tmp_path)  # debug sets 1
    result = run(cfg)
    assert result.status == "completed" and result.selection_metric == "score" and "score" in result.test_at_best
    if preset.endswith("zero_shot"):
        assert cfg.task.train is None and result.distributed["optimizer_steps"] == 0 and result.epochs == []
        columns = {"code": {"humaneval", "humaneval_plus", "mbpp", "mbpp_plus"}, "math": {"gsm8k", "math"}}[task]
        assert set(result.test_at_best) == columns | {"score"}
        return
    assert cfg.method.target_modules == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert result.distributed["optimizer_steps"] == 1
    assert result.config["trainer"]["lr_adapter"] > 0


def test_zero_shot_is_a_run_that_scores_the_test_sets_once(tmp_path):
    """method=zero_shot on an evaluation-only task: a completed result with test scores, no epoch, no file of weights."""
    from framework.pipeline import run

    cfg = compose_cfg(["model=tiny-llama", "method=zero_shot", "task=gsm8k-zeroshot", "task.template=alpaca",
                       "task.max_eval_samples=3", "task.max_new_tokens=4", "trainer.eval_batch_size=3"], tmp_path)
    assert cfg.trainer.epochs == 0  # the method file sets it
    result = run(cfg)
    assert result.status == "completed" and result.method == "zero-shot" and result.method_label == "Zero-shot"
    assert result.epochs == [] and result.best_epoch == 0 and result.best_val == {}
    assert set(result.test_at_best) == {"gsm8k", "score"} and result.test_last == result.test_at_best
    assert result.task_details["test_sizes"] == {"gsm8k": 3} and result.params["trainable_total"] == 0
    assert result.distributed["optimizer_steps"] == 0
    generations = Path(result.artifacts["generations"]).read_text().splitlines()
    assert len(generations) == 3
    assert not list(Path(cfg.paths.checkpoint_dir).rglob("*.safetensors"))
    assert run(cfg).run_id == result.run_id  # a rerun finds the completed result


def test_zero_shot_matches_a_direct_greedy_evaluation(tmp_path):
    """The evaluation-only path scores what the model generates, nothing else: same flags as calling the task directly."""
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader

    from framework import models
    from framework.pipeline import run
    from framework.trainer import evaluate

    overrides = ["model=tiny-llama", "task=sst2-instruct", f"task.data_dir={TEST_GLUE / 'SST-2'}",
                 "task.template=alpaca", "task.max_eval_samples=6", "task.val_size=2", "task.max_new_tokens=3", "trainer.eval_batch_size=4"]
    result = run(compose_cfg([*overrides, "method=zero_shot"], tmp_path))
    cfg = compose_cfg(overrides, tmp_path / "direct")
    task = instantiate(cfg.task, _convert_="all")
    tokenizer = models.build_processor(cfg.model, task.processor_kind)
    test = task.splits(tokenizer)["test"]
    torch.manual_seed(0)
    model = models.build_model(cfg.model, task.model_kind, task.head())
    accelerator = type("OneProcess", (), {"gather_for_metrics": staticmethod(lambda x: x),
                                          "unwrap_model": staticmethod(lambda m: m)})()
    direct = evaluate(accelerator, model, DataLoader(test, batch_size=4, collate_fn=task.collate(tokenizer, "test")),
                      task, tokenizer).metrics
    assert result.test_at_best == direct


@pytest.mark.parametrize("overrides,message", [
    (["method=zero_shot", "trainer.epochs=1"], "trains nothing but trainer.epochs=1"),
    (["method=lora", "task=gsm8k-zeroshot"], "has no training data"),
    (["method=zero_shot", "model=tiny-roberta", "task=sst2", "task.max_length=64"], "trains a new head"),
    (["method=lora"], "tokenizer .* has no chat template; use one of"),  # tinycoder's tokenizer has none
])
def test_evaluation_only_mistakes_are_input_errors(tmp_path, overrides, message):
    from framework.pipeline import InputError, prepare

    base = ["model=tiny-llama", "task=sst2-instruct", f"task.data_dir={TEST_GLUE / 'SST-2'}"]
    if "task=sst2" in overrides:
        base = [f"task.data_dir={TEST_GLUE / 'SST-2'}"]
    with pytest.raises(InputError, match=message):
        prepare(compose_cfg([*base, *overrides], tmp_path))


def test_gguf_conversion_is_made_once_and_reused(tmp_path, monkeypatch):
    from framework import gguf_cache

    monkeypatch.setenv(gguf_cache.CACHE_ENV, str(tmp_path))
    from framework.tasks.instruct_data import resolve_data_path

    source = str(resolve_data_path("package:tinycoder/models"))  # found without importing the package
    folder = gguf_cache.converted_folder(source, "tiny.gguf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}

    def no_second_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_cache, "convert", no_second_conversion)
    assert gguf_cache.converted_folder(source, "tiny.gguf") == folder
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    direct = AutoModelForCausalLM.from_pretrained(source, gguf_file="tiny.gguf")
    ids = torch.tensor([[1, 15043, 3186]])
    torch.testing.assert_close(model(ids).logits, direct(ids).logits)
    with pytest.raises(FileNotFoundError, match="holds"):
        gguf_cache.locate_gguf(source, "missing.gguf")
