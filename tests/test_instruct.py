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
    from framework.tasks.base import HeadSpec

    torch.manual_seed(0)
    return models.build_model(model_entry(), "causal-lm", HeadSpec(trains=False)).eval()


def math_task(**overrides) -> InstructTask:
    return InstructTask("math", **{**MATH, "val_size": 2, "max_new_tokens": 6, **overrides})


# ----------------------------------------------------------------------------------- masking
def test_loss_covers_the_answer_tokens_only(tokenizer):
    task = math_task()
    splits = task.splits(tokenizer)
    assert tokenizer.pad_token is not None and task.describe()["pad_token_set_to"] == tokenizer.eos_token
    by_target = {e.target: e for e in task._examples["train"]}
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
    rows = list(task.test_split(tokenizer))
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
    rows = list(task.test_split(tokenizer))
    batch = task.collate(tokenizer, "test")(rows)
    right = [f"The answer is: {ref}" for ref in batch["reference"]]
    assert task.score(right, batch) == [True] * len(rows)
    assert task.score(["The answer is: 999999"] * len(rows), batch) == [False] * len(rows)


def test_evaluate_reports_each_test_set_and_their_mean(tokenizer, tiny_llama):
    task = math_task()
    splits = task.splits(tokenizer)
    loader = torch.utils.data.DataLoader(splits["test"], batch_size=4, collate_fn=task.collate(tokenizer, "test"))
    with torch.no_grad():
        metrics = task.evaluate(tiny_llama, loader, IdentityAccelerator())
    assert set(metrics) == {"gsm8k", "math", "score"}
    assert metrics["score"] == pytest.approx((metrics["gsm8k"] + metrics["math"]) / 2)
    assert len(task.samples) == len(splits["test"])
    val_loader = torch.utils.data.DataLoader(splits["val"], batch_size=4, collate_fn=task.collate(tokenizer, "val"))
    with torch.no_grad():
        assert set(task.evaluate(tiny_llama, val_loader, IdentityAccelerator())) == {"score", "accuracy"}


def test_loss_selection_for_sources_without_a_score(tokenizer, tiny_llama):
    code = DATA / "code"
    task = InstructTask("code", train={"format": "magicoder", "path": str(code / "magicoder.jsonl")},
                        test={"mbpp": {"format": "mbpp", "path": str(code / "mbpp.jsonl")}},
                        template="magicoder", val_metric="loss", val_size=2)
    splits = task.splits(tokenizer)
    loader = torch.utils.data.DataLoader(splits["val"], batch_size=2, collate_fn=task.collate(tokenizer, "val"))
    with torch.no_grad():
        metrics = task.evaluate(tiny_llama, loader, IdentityAccelerator())
        batch = task.collate(tokenizer, "train")(list(splits["val"]))
        expected = task.training_loss(tiny_llama, batch).item()
    assert metrics["score"] == -metrics["loss"] and metrics["loss"] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="val_metric=loss"):
        InstructTask("code", train=task.train_source, test=task.test_sources, val_size=2).check_data()


# ------------------------------------------------------------------------------ data discipline
def test_val_is_a_slice_of_train_and_test_sets_stay_apart(tokenizer):
    task = InstructTask("commonsense", train={"format": "commonsense", "path": "ft-training_set/commonsense_170k.json"},
                        test={"boolq": {"format": "commonsense", "path": "dataset/boolq/test.json"}},
                        data_dir=str(DATA / "commonsense"), val_size=3, split_seed=1)
    splits = task.splits(tokenizer)
    val_prompts = {tuple(r["prompt_ids"]) for r in splits["val"]}
    train_prompts = {tuple(r["input_ids"][:int(np.argmax(r["labels"] != IGNORE))]) for r in splits["train"]}
    assert len(val_prompts) == 3 and not val_prompts & train_prompts
    assert len(val_prompts | train_prompts) == len(task._examples["train"])
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
    with pytest.raises(ValueError, match=r"bad.jsonl, row 0.*missing \['answer'\]"):
        task.check_data()


@pytest.mark.parametrize("name,folder,keywords", [("sst2", "SST-2", ("positive", "negative")),
                                                   ("rte", "RTE", ("true", "false"))])
def test_glue_as_instructions(name, folder, keywords):
    task = InstructTask(f"{name}-instruct", train={"format": f"{name}-instruct", "path": "train.tsv"},
                        test={name: {"format": f"{name}-instruct", "path": "dev.tsv"}},
                        data_dir=str(TEST_GLUE / folder), val_size=4)
    task.check_data()
    for example in task._examples["train"]:
        assert example.keywords == keywords and example.reference in keywords
        assert example.target == f"the correct answer is {example.reference}"
        assert f"Answer format: {keywords[0]}/{keywords[1]}" in example.instruction
    assert {e.reference for e in task._examples["train"]} == set(keywords)  # both labels occur


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
FAST_PRESETS = ("table3/llama2_c3a", "table4/llama3_lora")


def preset_data(preset: str, task: str) -> list[str]:
    if task == "commonsense":
        return [f"task.data_dir={DATA / 'commonsense'}"]
    if task == "math":
        return ["task.train.hub=null", f"task.train.path={DATA / 'math' / 'metamathqa.json'}",
                "task.test.gsm8k.hub=null", f"task.test.gsm8k.path={DATA / 'math' / 'gsm8k_test.jsonl'}",
                f"task.test.math.path={DATA / 'math' / 'math_test.jsonl'}"]
    return ["task.train.hub=null", f"task.train.path={DATA / 'code' / 'magicoder.jsonl'}",
            f"task.test.humaneval.path={DATA / 'code' / 'humaneval.jsonl'}",
            "task.test.mbpp.hub=null", f"task.test.mbpp.path={DATA / 'code' / 'mbpp.jsonl'}"]


@pytest.mark.parametrize("index,preset", [
    pytest.param(i, p, marks=() if p in FAST_PRESETS else pytest.mark.slow) for i, p in enumerate(PRESETS)])
def test_table_presets_compose_and_run_one_step(tmp_path, index, preset):
    from framework.pipeline import run

    task = "commonsense" if preset.startswith("table3") else ("math", "code")[index % 2]
    cfg = compose_cfg([f"experiment={preset}", "model=tiny-llama", f"task={task}", *preset_data(preset, task),
                       "task.val_size=2", "task.max_length=128", "task.max_new_tokens=4", "debug=fast",
                       "trainer.max_steps_per_epoch=1", "trainer.test_every_epoch=false"], tmp_path)
    assert cfg.method.target_modules == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    result = run(cfg)
    assert result.status == "completed" and result.distributed["optimizer_steps"] == 1
    assert result.selection_metric == "score" and "score" in result.test_at_best
    assert result.config["trainer"]["lr_adapter"] > 0


def test_zero_shot_script_writes_a_record(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from zero_shot import evaluate_zero_shot

    cfg = compose_cfg(["model=tiny-llama", "task=gsm8k-zeroshot", "task.template=alpaca", "task.max_eval_samples=3",
                       "task.max_new_tokens=4", "trainer.eval_batch_size=3"], tmp_path)
    record = evaluate_zero_shot(cfg)
    assert set(record["metrics"]) == {"gsm8k", "score"} and record["task_details"]["test_sizes"] == {"gsm8k": 3}
    saved = json.loads(Path(record["path"]).read_text())
    assert saved["metrics"] == record["metrics"] and len(saved["samples"]) == 3
    with pytest.raises(ValueError, match="no train source"):
        from hydra.utils import instantiate

        instantiate(cfg.task, _convert_="all").splits(None)


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
