"""Try the code sandbox as an adversary would, on this machine, and print what each attack gets (Markdown).

    python scripts/sandbox_adversary.py            # the table (docs/sandbox.md) and the per-program overhead
    python scripts/sandbox_adversary.py --runs 50  # more runs for the overhead medians

Every attack runs through ``framework.sandbox`` with the machine's isolation (``isolation()``), and the
host is checked afterwards (files that must not exist, process counts, the cgroup's peak memory). The
forgeries also run in the weak process-group sandbox (``allow_weak``) for comparison; the escapes do not
(where that sandbox runs as root they would act on the host).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework import sandbox  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = secrets.token_hex(4)
PYTHON_DIR = os.path.dirname(os.path.realpath(sys.executable))
HOST_TARGETS = [f"/usr/c3a-adversary-{TOKEN}", f"{PYTHON_DIR}/c3a-adversary-{TOKEN}",
                f"/tmp/c3a-adversary-{TOKEN}", f"{ROOT}/c3a-adversary-{TOKEN}"]


def _load(name: str) -> dict:
    return json.loads((ROOT / "data" / "instruct" / "code" / name).read_text().splitlines()[0])


PROBLEM = _load("humaneval.jsonl")
TEST = f"{PROBLEM['test']}\ncheck({PROBLEM['entry_point']})\n"
WRONG = PROBLEM["prompt"] + "    return None\n"
FORGERIES = [
    ("canonical solution (control)", PROBLEM["prompt"] + PROBLEM["canonical_solution"]),
    ("wrong + `import sys; sys.exit(0)`", WRONG + "import sys\nsys.exit(0)\n"),
    ("wrong + bare `exit()`", WRONG + "exit()\n"),
    ("wrong + `raise SystemExit(0)` under `__main__`", WRONG + "if __name__ == '__main__':\n    raise SystemExit(0)\n"),
    ("wrong + `os._exit(0)`", WRONG + "import os\nos._exit(0)\n"),
    ("wrong + `atexit.register(os._exit, 0)`", WRONG + "import atexit, os\natexit.register(os._exit, 0)\n"),
]


def _program(body: str) -> str:
    """A program that reports what it saw as ``REPORT {json}`` on stderr."""
    return "import json, os, sys\nout = {}\n" + body + "\nprint('REPORT ' + json.dumps(out), file=sys.stderr)\n"


ATTACKS = [
    ("mount escape: `mount -o remount,rw,bind` of /, /usr, Python's folder, then writes", _program(
        "import subprocess\n"
        f"out['mount exit'] = [subprocess.run(['mount', '-o', 'remount,rw,bind', p], capture_output=True).returncode "
        f"for p in ('/', '/usr', {PYTHON_DIR!r})]\n"
        f"for path in {HOST_TARGETS!r}:  # through the shell: no Python guard in the way\n"
        "    done = subprocess.run(['sh', '-c', f'echo x > {path}'], capture_output=True, text=True)\n"
        "    out[path] = done.stderr.strip().split(': ')[-1] or 'written'\n")),
    ("`io.FileIO` / `_io.FileIO` / `posix.open` writes outside the folder", _program(
        "import io, _io, posix\n"
        f"for name, write in (('io.FileIO', lambda p: io.FileIO(p, 'w')), ('_io.FileIO', lambda p: _io.FileIO(p, 'w')),\n"
        "                    ('posix.open', lambda p: posix.open(p, posix.O_WRONLY | posix.O_CREAT))):\n"
        f"    for path in {HOST_TARGETS[:2]!r}:\n"
        "        try:\n            write(path)\n            out[name] = 'written'\n"
        "        except OSError as err:\n            out[name] = f'{type(err).__name__} {err.errno}'\n")),
    ("read /etc/passwd, the project (/work), home, results", _program(
        f"for path in ('/etc/passwd', {str(ROOT / 'README.md')!r}, {str(ROOT / 'results')!r}, "
        f"{os.path.expanduser('~')!r}):\n"
        "    try:\n        out[path] = os.listdir(path) if os.path.isdir(path) else len(open(path).read())\n"
        "    except OSError as err:\n        out[path] = type(err).__name__\n")),
    ("fork bomb (every child sleeps 20 s)", _program(
        "n = 0\nwhile True:\n    try:\n        if os.fork() == 0:\n            import time\n            time.sleep(20)\n"
        "        n += 1\n    except OSError as err:\n        out['error'] = err.strerror\n        break\nout['forks'] = n\n")),
    ("memory: 3 children x 300 MiB (touched) under memory_mb=512", _program(
        "pids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        block = bytearray(300 << 20)\n"
        "        for i in range(0, len(block), 4096):\n            block[i] = 1\n        import time\n"
        "        time.sleep(1)\n        os._exit(0)\n    pids.append(pid)\n"
        "out['child exit codes'] = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]\n")),
    ("disk: 1 MiB files until refused", _program(
        "n = 0\ntry:\n    while True:\n        open(f'f{n}', 'wb').write(b'x' * (1 << 20))\n        n += 1\n"
        "except OSError as err:\n    out['error'] = err.strerror\nout['MiB written'] = n\n")),
    ("disk: empty files until refused", _program(
        "n = 0\ntry:\n    while True:\n        open(f'e{n}', 'w').close()\n        n += 1\n"
        "except OSError as err:\n    out['error'] = err.strerror\nout['files'] = n\n")),
    ("network: raw `_socket` to 1.1.1.1:80 and 127.0.0.1:22", _program(
        "import _socket\nfor host, port in (('1.1.1.1', 80), ('127.0.0.1', 22)):\n    s = _socket.socket()\n"
        "    s.settimeout(2)\n    try:\n        s.connect((host, port))\n        out[host] = 'connected'\n"
        "    except OSError as err:\n        out[host] = err.strerror\n")),
    ("`os.kill(-1, SIGKILL)` (every process it may signal) after starting one `sleep`", _program(
        "import signal, subprocess\nchild = subprocess.Popen(['sleep', '30'])\nos.kill(-1, signal.SIGKILL)\n"
        "out['own child'] = child.wait()\n"
        "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as err:\n    out['then'] = err.strerror\n")),
]


def _host_processes() -> int:
    return len(glob.glob("/proc/[0-9]*"))


class _Watch:
    """Samples the host's process count and the sandbox memory cgroups' peak while an attack runs."""

    def __init__(self):
        self.stop, self.processes, self.memory = False, 0, 0
        self.base = _host_processes()
        parents = sandbox._cgroup_parents()
        self.memory_glob = str(parents["memory"] / f"c3a-sandbox-{os.getpid()}-*") if "memory" in parents else None
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop:
            self.processes = max(self.processes, _host_processes() - self.base)
            for folder in glob.glob(self.memory_glob) if self.memory_glob else []:
                try:
                    self.memory = max(self.memory, int(Path(folder, "memory.max_usage_in_bytes").read_text()))
                except (OSError, ValueError):
                    pass
            time.sleep(0.02)

    def done(self):
        self.stop = True
        self.thread.join()


def _report(outcome: sandbox.Outcome) -> str:
    lines = [line for line in outcome.stderr_tail.splitlines() if line.startswith("REPORT ")]
    return lines[-1][len("REPORT "):] if lines else outcome.stderr_tail.strip().splitlines()[-1][:120]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(box: dict) -> list[str]:
    rows = ["| attack | outcome (namespaces sandbox, this machine) | host afterwards | weak sandbox (allow_weak) |",
            "|---|---|---|---|"]
    weak_nobody = os.geteuid() == 0 and sandbox._probe("process group", {}, nobody=True) is None
    for name, solution in FORGERIES:
        strong = sandbox.run_program(solution, TEST)
        weak = sandbox._run("process group", {}, solution, TEST, 10, 1024, 64, 4096, weak_nobody)
        rows.append(f"| forgery: {name} | **{strong.status}** (exit {strong.returncode}) | - | "
                    f"{weak.status} (exit {weak.returncode}) |")
    for name, program in ATTACKS:
        watch = _Watch()
        memory = 512 if name.startswith("memory") else sandbox.DEFAULTS["memory_mb"]
        outcome = sandbox.run_program(program, "pass", timeout_s=10, memory_mb=memory)
        watch.done()
        left = [p for p in HOST_TARGETS if os.path.exists(p)]
        host = (f"files written on the host: {left}" if left else "no file written on the host") + \
            f"; host processes +{watch.processes} at peak"
        if watch.memory:
            host += f"; sandbox memory peak {watch.memory / 2 ** 20:.0f} MiB"
        rows.append(f"| {_cell(name)} | {outcome.status}: `{_cell(_report(outcome))}` | {host} | not run |")
    rows.append(f"\nIsolation used for every row: `{json.dumps(box)}`")
    return rows


def overhead(runs: int) -> list[str]:
    """Median wall time of a trivial program: a bare interpreter, the weak sandbox, the namespaces sandbox."""
    python = os.path.realpath(sys.executable)
    timings: dict[str, list[float]] = {"bare `python -I -S -c pass`": [], "weak sandbox": [], "namespaces sandbox": []}
    cgroups = {c: p for c, p in sandbox._cgroup_parents().items() if c in sandbox.isolation()["cgroups"]}
    for _ in range(runs):  # interleaved: the machine's load hits all three alike
        for name in timings:
            started = time.perf_counter()
            if name.startswith("bare"):
                subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
            else:
                mode = "namespaces" if name.startswith("namespaces") else "process group"
                assert sandbox._run(mode, cgroups, "x = 1\n", "assert x == 1\n", 10, 1024, 64, 4096, False).passed
            timings[name].append(time.perf_counter() - started)
    bare = statistics.median(timings["bare `python -I -S -c pass`"])
    lines = [f"Per-program wall time, median of {runs} (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs):"]
    for name, values in timings.items():
        median = statistics.median(values)
        lines.append(f"- {name}: {median * 1000:.0f} ms ({median / bare:.1f}x bare; +{(median - bare) * 1000:.0f} ms)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per overhead median")
    args = parser.parse_args()
    box = sandbox.isolation()
    print(f"uid {os.geteuid()}, kernel {os.uname().release}\n")
    print("\n".join(table(box)))
    print()
    print("\n".join(overhead(args.runs)))
    for path in HOST_TARGETS:  # leave nothing behind, should any attack have worked
        if os.path.exists(path):
            os.remove(path)


if __name__ == "__main__":
    main()
