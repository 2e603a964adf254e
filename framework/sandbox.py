"""Run model-generated code in a separate, contained process (HumanEval / MBPP pass@1).

Generated code is untrusted. Each program runs:

- in its own process group and, where ``unshare`` works, in its own mount, network and PID
  namespaces: no network interface, every mount read-only except its working folder, and every
  process it starts dies with it,
- under a wall-clock timeout (the whole process group is killed), ``RLIMIT_CPU``, ``RLIMIT_AS``
  (memory), ``RLIMIT_FSIZE`` (file size, stdout/stderr included) and ``RLIMIT_NPROC``,
- in a throw-away working folder (its cwd, HOME and TMPDIR), deleted afterwards,
- behind a Python guard (``_RUNNER``) that refuses socket creation and file writes outside that
  folder: the only network barrier where namespaces are unavailable, a second one where they are.

``isolation()`` says which of these this machine provides; results record it.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

OUTPUT_LIMIT_BYTES = 1 << 20

# Installs the guard, then runs program.py as __main__. Runs with `python -I` (no env, no user site).
_RUNNER = r'''
import builtins, io, os, socket, sys
WORK = os.path.realpath(os.getcwd())

def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")

class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _no_network()

socket.socket = _NoSocket
socket.create_connection = socket.socketpair = socket.fromfd = _no_network

def _inside(path):
    real = os.path.realpath(os.path.join(WORK, os.fspath(path)))
    return real == WORK or real.startswith(WORK + os.sep)

_open, _os_open = builtins.open, os.open

def _guarded_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError(f"the sandbox may only write inside its working folder, not {file!r}")
    return _open(file, mode, *args, **kwargs)

def _guarded_os_open(path, flags, *args, **kwargs):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not _inside(path):
        raise PermissionError(f"the sandbox may only write inside its working folder, not {path!r}")
    return _os_open(path, flags, *args, **kwargs)

builtins.open = io.open = _guarded_open
os.open = _guarded_os_open
sys.argv = ["program.py"]
source = _open(os.environ["SANDBOX_PROGRAM"]).read()
exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
'''


@dataclass(frozen=True)
class Outcome:
    """How one program ended: ``passed`` (exit 0), ``failed`` (non-zero exit) or ``timeout``."""

    status: str
    returncode: Optional[int]
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


# Inside fresh mount/network/PID namespaces: make every mount read-only except the working folder
# ($1), then exec the rest of the command line. Any mount that cannot be made read-only fails it.
_CONTAIN = r'''
set -e
work="$1"; shift
mount --make-rprivate /
mount --bind "$work" "$work"
for mp in $(awk '{print $2}' /proc/self/mounts | sort -u); do
  case "$mp" in "$work"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/mqueue) continue;; esac
  mount -o remount,bind,ro "$mp"
done
cd "$work"
exec "$@"
'''


def _command(prefix: Sequence[str], work: Path, runner: Path) -> list[str]:
    python = [sys.executable, "-I", "-B", str(runner)]
    return [*prefix, "sh", "-c", _CONTAIN, "sandbox", str(work), *python] if prefix else python


@functools.lru_cache(maxsize=None)
def isolation() -> dict:
    """The containment this machine gives (probed once by running a program through it)."""
    unshare = shutil.which("unshare")
    if unshare:
        namespaces = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        user = [] if os.geteuid() == 0 else ["--map-root-user"]
        prefix = [unshare, *user, *namespaces]
        with tempfile.TemporaryDirectory(prefix="c3a-sandbox-probe-") as root:
            (Path(root) / "runner.py").write_text("pass\n")
            (Path(root) / "work").mkdir()
            try:
                probe = subprocess.run(_command(prefix, Path(root) / "work", Path(root) / "runner.py"),
                                       capture_output=True, timeout=30)
                works = probe.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                works = False
        if works:
            return {"mode": "namespaces", "prefix": prefix,
                    "network": "none (empty network namespace) + socket guard",
                    "filesystem": "read-only except the working folder (mount namespace)",
                    "processes": "own PID namespace: all die with the program"}
    return {"mode": "process group", "prefix": [],
            "network": "socket guard only (Python-level; unshare unavailable here)",
            "filesystem": "write guard only (Python-level)",
            "processes": "process group killed at the end"}


def _limits(timeout_s: float, memory_mb: int):
    def apply() -> None:
        import resource

        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))
    return apply


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run ``source`` as a Python program in the sandbox; exit status 0 means it passed."""
    if not timeout_s > 0 or not memory_mb > 0:
        raise ValueError(f"timeout_s={timeout_s!r} and memory_mb={memory_mb!r} must be positive")
    box = isolation()
    with tempfile.TemporaryDirectory(prefix="c3a-sandbox-") as root:
        root_path = Path(root)
        os.chmod(root_path, 0o755)
        work = root_path / "work"
        work.mkdir()
        (root_path / "runner.py").write_text(_RUNNER)
        (root_path / "program.py").write_text(source)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "SANDBOX_PROGRAM": str(root_path / "program.py")}
        command = _command(box["prefix"], work, root_path / "runner.py")
        with open(root_path / "stdout", "wb") as out, open(root_path / "stderr", "wb") as err:
            process = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=err, start_new_session=True,
                                       preexec_fn=_limits(timeout_s, memory_mb))
            try:
                returncode: Optional[int] = process.wait(timeout=timeout_s)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # whatever it started, too
                except ProcessLookupError:
                    pass
                process.wait()
        stderr = (root_path / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    return Outcome(status=status, returncode=returncode, stderr_tail=stderr)


# ------------------------------------------------------------------------- programs from generations
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(generation: str) -> str:
    """The first fenced code block of a generation (an unterminated one counts), else the whole text."""
    match = FENCE.search(generation)
    return match.group(1) if match else generation


def humaneval_program(prompt: str, generation: str, test: str, entry_point: str) -> str:
    """HumanEval: the completed function (a full definition, or the prompt + a body) and its check()."""
    code = extract_code(generation)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        imports = "\n".join(line for line in prompt.splitlines() if re.match(r"\s*(import|from)\s", line))
        body = f"{imports}\n{code}"
    else:
        body = prompt + code
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def mbpp_program(generation: str, tests: Sequence[str], setup: str = "") -> str:
    """MBPP: the generated code, the task's setup code and its assert statements."""
    return "\n".join([extract_code(generation), setup, *tests, ""])


def pass_at_1(outcomes: Sequence[Outcome]) -> float:
    """pass@1 with one greedy sample per problem: the fraction of programs that passed."""
    if not outcomes:
        raise ValueError("pass@1 of no programs")
    return sum(o.passed for o in outcomes) / len(outcomes)
