"""Rows of the wrong shape or type, and files that are not what their name says: every reader stops with an
error naming the file and the line (``<file>, line N``, N from 1, as an editor counts), before any compute.

The table below is the list of bad inputs tried (issue 14 §4): each case is a file's bytes, the source format
that reads it, and the error it must get. Through the pipeline a bad row is an ``InputError`` and leaves no
result file.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import ROOT, compose_cfg

DATA = ROOT / "data" / "instruct"
GSM = {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}
COMMON = {"instruction": "Is the sky blue? Answer format: true/false", "input": "", "output": "the correct answer is true",
          "answer": "true"}
META = {"query": "What is 2 + 3?", "response": "2 + 3 = 5. The answer is: 5"}
MATH = {"problem": "What is 1/2 + 1/2?", "solution": "It is $\\boxed{1}$."}


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def json_list(*rows) -> bytes:
    """A pretty-printed JSON list: each row spans several lines, as in Commonsense170K's files."""
    return json.dumps(list(rows), indent=1).encode()


def with_bad_byte(row: dict) -> bytes:
    return json.dumps(row).encode().replace(b"Tom", b"T\xffm")


# (case, format, file name, file bytes, error pattern; FILE stands for the file's path)
CASES = [
    ("jsonl line that is a number", "gsm8k", "a.jsonl", jsonl(GSM, "5"),
     r"FILE, line 2: a 'gsm8k' row must be an object with the keys \['question', 'answer'\]; got 5 \(an integer\)"),
    ("jsonl line that is a list", "gsm8k", "a.jsonl", jsonl(GSM, "[1, 2]"), r"FILE, line 2: .*got \[1, 2\] \(a list\)"),
    ("jsonl line that is a string", "metamathqa", "a.jsonl", jsonl(META, META, '"hello"'),
     r"FILE, line 3: a 'metamathqa' row must be an object"),
    ("gsm8k answer null", "gsm8k", "a.jsonl", jsonl(GSM, {**GSM, "answer": None}),
     r"FILE, line 2: a 'gsm8k' row needs 'answer' as a string; got null"),
    ("gsm8k answer an integer", "gsm8k", "a.jsonl", jsonl({**GSM, "answer": 5}),
     r"FILE, line 1: a 'gsm8k' row needs 'answer' as a string; got 5 \(an integer\)"),
    ("gsm8k question a list", "gsm8k", "a.jsonl", jsonl({**GSM, "question": ["a"]}), r"FILE, line 1: .*'question'"),
    ("gsm8k answer without ####", "gsm8k", "a.jsonl", jsonl(GSM, {**GSM, "answer": "it is 5"}),
     r"FILE, line 2: not a GSM8K solution \(no '####' line\)"),
    ("gsm8k answer after #### not a number", "gsm8k", "a.jsonl", jsonl({**GSM, "answer": "so\n#### five"}),
     r"FILE, line 1: the GSM8K answer after '####' must be a number; got 'five'"),
    ("math solution without \\boxed", "math", "a.jsonl", jsonl(MATH, MATH, {**MATH, "solution": "It is 1."}),
     r"FILE, line 3: not a MATH solution \(no \\boxed"),
    ("math problem null", "math", "a.jsonl", jsonl({**MATH, "problem": None}), r"FILE, line 1: .*'problem' as a string"),
    ("commonsense answer 1", "commonsense", "a.json", json_list(COMMON, {**COMMON, "answer": 1}),
     r"FILE, line 8: a 'commonsense' row needs 'answer' as a string; got 1 \(an integer\)"),
    ("commonsense answer true (a JSON boolean)", "commonsense", "a.json", json_list({**COMMON, "answer": True}),
     r"FILE, line 2: .*'answer' as a string; got true \(a boolean\)"),
    ("commonsense input a number", "commonsense", "a.json", json_list({**COMMON, "input": 7}),
     r"FILE, line 2: .*'input' as a string; got 7"),
    ("commonsense answer outside every family", "commonsense", "a.json", json_list(COMMON, {**COMMON, "answer": "maybe"}),
     r"FILE, line 8: answer 'maybe' belongs to no answer-keyword family"),
    ("json list element that is a number", "commonsense", "a.json", b'[\n  5\n]\n', r"FILE, line 2: .*got 5"),
    ("metamathqa query null", "metamathqa", "a.json", json_list(META, META, {**META, "query": None}),
     r"FILE, line 10: a 'metamathqa' row needs 'query' as a string; got null"),
    ("metamathqa response a number", "metamathqa", "a.jsonl", jsonl({**META, "response": 5}), r"FILE, line 1: .*'response'"),
    ("magicoder response null", "magicoder", "a.jsonl", jsonl({"instruction": "x", "response": None}),
     r"FILE, line 1: a 'magicoder' row needs 'response'"),
    ("humaneval prompt null", "humaneval", "a.jsonl",
     jsonl({"task_id": "H/0", "prompt": None, "test": "def check(c):\n    pass\n", "entry_point": "f"}),
     r"FILE, line 1: a 'humaneval' row needs 'prompt' as a string; got null"),
    ("mbpp code a number", "mbpp", "a.jsonl",
     jsonl({"task_id": 1, "text": "t", "code": 5, "test_list": ["assert True"]}), r"FILE, line 1: .*'code'"),
    ("missing key (1-based line)", "gsm8k", "a.jsonl", jsonl({"question": "q"}), r"FILE, line 1: .*missing \['answer'\]"),
    ("truncated json list", "metamathqa", "a.json", json_list(META, META)[:-20],
     r"FILE, line 8: not valid JSON \(Unterminated string.*\(the file ends early: truncated\?\)"),
    ("json list without its closing bracket", "metamathqa", "a.json", json_list(META).rstrip(b"]\n"),
     r"FILE, line 5: not valid JSON \(Expecting ',' delimiter.*truncated"),
    ("json list with a missing comma", "metamathqa", "a.json", b'[\n {"query": "a", "response": "b"}\n {"q": 1}\n]',
     r"FILE, line 3: not valid JSON \(Expecting ',' delimiter"),
    ("truncated jsonl line", "gsm8k", "a.jsonl", jsonl(GSM)[:-10], r"FILE, line 1: not JSON"),
    ("bad utf-8", "gsm8k", "a.jsonl", jsonl(GSM, GSM)[:-1] + b"\n" + with_bad_byte(GSM) + b"\n",
     r"FILE, line 3: not UTF-8 text \(byte b'\\xff'"),
    ("bad utf-8 in a gzip file", "gsm8k", "a.jsonl.gz", gzip.compress(with_bad_byte(GSM)), r"FILE, line 1: not UTF-8"),
    ("not gzip", "gsm8k", "a.jsonl.gz", jsonl(GSM), r"FILE: not a readable gzip file \(BadGzipFile"),
    ("truncated gzip", "gsm8k", "a.jsonl.gz", gzip.compress(jsonl(*[GSM] * 50))[:-30],
     r"FILE: not a readable gzip file \(EOFError"),
    ("empty file", "gsm8k", "a.jsonl", b"\n\n", r"FILE: no rows"),
    ("one pretty-printed object", "gsm8k", "a.json", json.dumps(GSM, indent=1).encode(),
     r"FILE: holds one JSON object, not rows"),
]


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case,fmt,name,content,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_row_or_file_names_the_file_and_line(tmp_path, case, fmt, name, content, message):
    from framework.tasks.instruct_data import read_source

    path = _write(tmp_path, name, content)
    with pytest.raises(ValueError, match=message.replace("FILE", str(path).replace("\\", "\\\\"))):
        read_source({"format": fmt, "path": str(path)}, "task.train")


def test_good_rows_read_with_their_lines(tmp_path):
    """The same readers accept the good rows: pretty-printed JSON lists, JSONL with blank lines, a string that holds
    U+2028 (a line separator to str.splitlines, not to JSON), a byte-order mark, gzip."""
    from framework.tasks.instruct_data import read_records, read_source

    lines = _write(tmp_path, "a.jsonl", b"\xef\xbb\xbf" + jsonl(GSM) + b"\n" + jsonl({**GSM, "question": "a\u2028b"}))
    assert [where for where, _ in read_records(lines)] == [f"{lines}, line 1", f"{lines}, line 3"]
    assert read_source({"format": "gsm8k", "path": str(lines)}, "t")[1].instruction == "a\u2028b"
    listed = _write(tmp_path, "b.json", json_list(COMMON, COMMON, COMMON))
    assert [where for where, _ in read_records(listed)] == [f"{listed}, line {n}" for n in (2, 8, 14)]
    assert [row for _, row in read_records(listed)] == json.loads(listed.read_text())
    packed = _write(tmp_path, "c.jsonl.gz", gzip.compress(jsonl(GSM, GSM)))
    assert len(read_source({"format": "gsm8k", "path": str(packed)}, "t")) == 2


def test_an_empty_json_list_has_no_rows(tmp_path):
    from framework.tasks.instruct_data import read_records

    with pytest.raises(ValueError, match="no rows"):
        read_records(_write(tmp_path, "d.json", b" [ ] "))


@pytest.mark.parametrize("text,message", [
    ('question = "q"\nanswer = 5\n', r"p1.toml: a 'gsm8k' row needs 'answer' as a string; got 5"),
    ('question = "q"\nanswer = "no marker"\n', r"p1.toml: not a GSM8K solution"),
    ('question = "q"\nanswer = \n', r"p1.toml: not valid TOML \(.*line 2"),
])
def test_a_bad_toml_problem_names_its_file(tmp_path, text, message):
    from framework.tasks.instruct_data import read_source

    folder = tmp_path / "problems"
    folder.mkdir()
    (folder / "p0.toml").write_text('question = "q"\nanswer = "so\\n#### 4"\n')
    (folder / "p1.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_source({"format": "gsm8k", "path": str(folder)}, "task.test.gsm8k")


def test_a_bad_plus_row_names_its_line(tmp_path):
    from framework.tasks.instruct_data import read_source

    plus = _write(tmp_path, "plus.jsonl", (DATA / "code" / "humanevalplus.jsonl").read_bytes().rstrip(b"\n") + b"\n"
                  + jsonl({"task_id": "Sample/9", "test": None}))
    with pytest.raises(ValueError, match=rf"{plus}, line 3: a 'humaneval plus' row needs 'test' as a string; got null"):
        read_source({"format": "humaneval", "path": str(DATA / "code" / "humaneval.jsonl"), "plus": {"path": str(plus)}},
                    "task.test.humaneval")


# ------------------------------------------------------------------------------------------- GLUE TSV
@pytest.mark.parametrize("content,message", [
    (b"sentence\tlabel\nfine\t1\nbad\t2\n", r"FILE, line 3: bad label '2'; expected 0 or 1"),
    (b"sentence\tlabel\n\nfine\t1\nbad\t2\n", r"FILE, line 4: bad label '2'"),          # blank lines count
    (b"sentence\tlabel\nfine\t1\nno tab here\n", r"FILE, line 3: expected 2 tab-separated columns"),
    (b"sentence\tlabel\nfine\t1\ncaf\xe9\t0\n", r"FILE, line 3: not UTF-8 text"),
    (b"sentence\tlabel\n", r"FILE: no examples found"),
])
def test_glue_tsv_errors_name_the_file_and_line(tmp_path, content, message):
    from framework.tasks.glue_data import GLUE_TASKS, read_glue_tsv

    path = _write(tmp_path, "train.tsv", content)
    with pytest.raises(ValueError, match=message.replace("FILE", str(path))):
        read_glue_tsv(path, GLUE_TASKS["sst2"])


# ------------------------------------------------------------------------------------------- image CSV
@pytest.mark.parametrize("rows,message", [
    ("a.png,cat\nb.png\n", r"FILE, line 3: a path,label CSV row needs 'label' as a string; got null"),
    ("a.png,cat\n\nmissing.png,dog\n", r"FILE, line 4: image .*missing.png does not exist"),    # blank lines count
    ("a.png,cat\n,dog\n", r"FILE, line 3: empty path"),
    ('a.png,cat\n"b\nc.png",dog\n', r"FILE, line 4: image .*b\nc.png does not exist"),           # a quoted newline
])
def test_image_csv_errors_name_the_file_and_line(tmp_path, rows, message):
    from PIL import Image

    from framework.tasks.image_data import csv_labels, read_csv

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = _write(tmp_path, "train.csv", f"path,label\n{rows}".encode())
    with pytest.raises((ValueError, FileNotFoundError), match=message.replace("FILE", str(path))):
        read_csv(path, sorted(set(csv_labels(path))), "train.csv")


def test_image_csv_with_a_byte_order_mark_reads(tmp_path):
    """Spreadsheet programs write a UTF-8 byte-order mark: the header is still 'path,label'."""
    from PIL import Image

    from framework.tasks.image_data import read_csv

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = _write(tmp_path, "train.csv", "\ufeffpath,label\na.png,cat\n".encode())
    assert read_csv(path, ["cat", "dog"], "train.csv").paths == [str(tmp_path / "a.png")]


def test_image_csv_that_is_not_utf8(tmp_path):
    from framework.tasks.image_data import csv_labels

    path = _write(tmp_path, "train.csv", b"path,label\na.png,cat\nb.png,ch\xe2t\n")
    with pytest.raises(ValueError, match=rf"{path}, line 3: not UTF-8 text"):
        csv_labels(path)


# --------------------------------------------------------------------------------- through the pipeline
def _math_run(tmp_path: Path, train: Path, gsm8k: Path) -> list[str]:
    return ["model=tiny-llama", "task=math", "method=lora", "tracker=none", "task.template=alpaca",
            "task.train.hub=null", f"task.train.path={train}", "task.test.gsm8k.hub=null", f"task.test.gsm8k.path={gsm8k}",
            f"task.test.math.path={DATA / 'math' / 'math_test.jsonl'}", "task.val_size=2", "trainer.epochs=1",
            "method.target_modules=${model.targets.instruct}"]


PIPELINE_CASES = [
    ("metamathqa query null", "train", json_list(META, META, {**META, "query": None}),
     r"line 10: a 'metamathqa' row needs 'query' as a string; got null"),
    ("json list element a number", "train", b'[\n 5\n]', r"line 2: a 'metamathqa' row must be an object"),
    ("jsonl line a number", "test", jsonl(GSM, "5"), r"line 2: a 'gsm8k' row must be an object"),
    ("gsm8k answer null", "test", jsonl(GSM, GSM, {**GSM, "answer": None}), r"line 3: a 'gsm8k' row needs 'answer'"),
    ("gsm8k answer an integer", "test", jsonl({**GSM, "answer": 5}), r"line 1: a 'gsm8k' row needs 'answer'"),
]


@pytest.mark.parametrize("case,which,content,message", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_a_bad_row_is_an_input_error_and_leaves_no_result(tmp_path, monkeypatch, case, which, content, message):
    import framework.trainer as trainer
    from framework.pipeline import InputError, run

    train = _write(tmp_path, "train.json", content if which == "train" else (DATA / "math" / "metamathqa.json").read_bytes())
    gsm8k = _write(tmp_path, "gsm8k.jsonl", content if which == "test" else jsonl(GSM))
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(InputError, match=f"{train if which == 'train' else gsm8k}, {message}"):
        run(compose_cfg(_math_run(tmp_path, train, gsm8k), tmp_path))
    assert not list((tmp_path / "results").rglob("*.json"))


# --------------------------------------------------------------------------- Hub rows (local folders, offline)
def test_a_bad_hub_row_is_named_by_its_row_number(tmp_path):
    """``task.train.hub`` rows have no file lines: ``hub <id>, row N`` counts from 1 too."""
    from framework.tasks.instruct_data import read_source

    folder = tmp_path / "hub"
    folder.mkdir()
    _write(folder, "train.jsonl", jsonl(GSM, {**GSM, "answer": None}, GSM))
    with pytest.raises(ValueError, match=rf"hub {folder}, row 2: a 'gsm8k' row needs 'answer' as a string; got null"):
        read_source({"format": "gsm8k", "hub": str(folder)}, "task.train")


def test_hub_image_labels_of_the_wrong_type_or_one_class(tmp_path):
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from framework.tasks.image_data import load_hub

    def write(folder: Path, labels: list, feature) -> Path:
        (folder / "data").mkdir(parents=True)
        features = datasets.Features({"img": datasets.Image(), "label": feature})
        images = [Image.fromarray(np.full((4, 4, 3), 9 * i, np.uint8)) for i in range(len(labels))]
        for split in ("train", "test"):
            datasets.Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(
                str(folder / "data" / f"{split}-00000-of-00001.parquet"))
        return folder

    splits = {"train": "train", "test": "test"}
    bad = write(tmp_path / "bad", ["cat", None, "dog"], datasets.Value("string"))
    with pytest.raises(ValueError, match=r"split 'train': column 'label' row 2 must be an integer or a string; got null"):
        load_hub(str(bad), None, splits, "img", "label", None)
    one = write(tmp_path / "one", [0, 0, 0], datasets.ClassLabel(names=["cat"]))
    with pytest.raises(ValueError, match=r"split 'train' column 'label': one class found: \['cat'\]"):
        load_hub(str(one), None, splits, "img", "label", None)


def test_glue_hub_rows_of_the_wrong_type(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from framework.tasks.glue_data import GLUE_TASKS, load_hub_splits

    good = datasets.Dataset.from_dict({"sentence": ["fine", "good"], "label": [0, 1]})
    bad = datasets.Dataset.from_dict({"sentence": ["fine", None, "good"], "label": [0, 1, 1]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(train=good, validation=bad))
    with pytest.raises(ValueError, match=r"nyu-mll/glue/sst2 split 'validation': column 'sentence' row 2 must be a "
                                         r"string; got null"):
        load_hub_splits(GLUE_TASKS["sst2"], "nyu-mll/glue")


def test_bad_tsv_and_csv_files_are_input_errors_through_the_pipeline(tmp_path, monkeypatch):
    """GLUE TSV bytes that are not UTF-8 and an image CSV row with a missing column: InputError, no result file."""
    import shutil

    import framework.trainer as trainer
    from conftest import TEST_GLUE, tiny_overrides
    from framework.pipeline import InputError, run

    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    glue = tmp_path / "SST-2"
    shutil.copytree(TEST_GLUE / "SST-2", glue)
    lines = (glue / "train.tsv").read_bytes().split(b"\n")
    (glue / "train.tsv").write_bytes(b"\n".join([*lines[:4], lines[4].replace(b" ", b" \xe9 ", 1), *lines[5:]]))
    with pytest.raises(InputError, match=rf"{glue / 'train.tsv'}, line 5: not UTF-8 text"):
        run(compose_cfg([*tiny_overrides("sst2"), f"task.data_dir={glue}"], tmp_path / "glue"))
    images = ROOT / "tests" / "data" / "images"
    table = tmp_path / "table"
    table.mkdir()
    for split in ("train", "test"):
        (table / f"{split}.csv").write_text((images / "csv" / f"{split}.csv").read_text().replace("../", f"{images}/"))
    (table / "train.csv").write_text((table / "train.csv").read_text() + f"{images}/folder/train/red/0.png\n")
    line = len((table / "train.csv").read_text().splitlines())
    with pytest.raises(InputError, match=rf"{table / 'train.csv'}, line {line}: a path,label CSV row needs 'label'"):
        run(compose_cfg(["model=tiny-vit", "task=pets", "task.source=csv", f"task.data_dir={table}", "task.val_size=3",
                         "method=lora", "tracker=none", "trainer.epochs=1"], tmp_path / "image"))
    assert not list(tmp_path.rglob("results/**/*.json"))


# ------------------------------------------------------------------------------------------------ images
def _bomb_png(path: Path) -> Path:
    """A PNG whose header claims 40,000 x 40,000 pixels: PIL refuses it when opening (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_named_by_every_image_reader(tmp_path):
    import shutil

    from framework.tasks.dreambooth_data import read_images
    from framework.tasks.image_data import read_class_folders

    root = tmp_path / "train"
    shutil.copytree(ROOT / "tests" / "data" / "images" / "folder" / "train", root)
    bomb = _bomb_png(root / "red" / "huge.png")
    source, _ = read_class_folders(root, ["blue", "green", "red"], "train/")
    with pytest.raises(ValueError, match=rf"{bomb}: cannot read the image \(DecompressionBombError"):
        [source.open(i) for i in range(len(source))]
    with pytest.raises(ValueError, match=rf"task.instance_dir: {bomb}: cannot read the image \(DecompressionBombError"):
        read_images(root / "red", "task.instance_dir")
