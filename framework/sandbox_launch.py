"""Builds the sandbox's namespaces, then runs the program's command in them (``framework.sandbox``).

Run as ``python -I -S -B sandbox_launch.py CONFIG`` (stdlib only). As root or as a plain user it:

1. joins the run's cgroups (memory, pids) when the parent made them, drops supplementary groups;
2. enters new user, mount, network, PID, IPC and UTS namespaces; the user namespace maps its uid 0
   to ``host_uid`` (65534 when started as root, the caller's own uid otherwise), so every mount
   inherited from the host is locked (cannot be remounted writable or uncovered);
3. builds a private root on a small tmpfs: read-only binds of the system (``/usr``), the Python
   installation and the packages the parent names, /dev/{null,zero,full,random,urandom}, and a
   size-capped tmpfs working folder; pivots into it, so the project, /root and results are absent;
4. switches to the mapped uid, forks the PID namespace's init (reaps, exits with the program), which
   forks the program with no capabilities (empty bounding set, SECBIT_NOROOT, no_new_privs), the
   resource limits and an empty environment but PATH/HOME/TMPDIR/LANG.

Exit status: the program's, or 128 + signal. Any setup failure exits 125 with the reason on stderr.
"""
import ctypes
import json
import os
import signal
import sys

CLONE = {"user": 0x10000000, "mount": 0x00020000, "net": 0x40000000, "pid": 0x20000000, "ipc": 0x08000000,
         "uts": 0x04000000}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_DUMPABLE, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 4, 28, 38
SECURE_ALL = 0b111111  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS and their locks
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
DEVICES = ("null", "zero", "full", "random", "urandom")
LIBC = ctypes.CDLL(None, use_errno=True)


def _call(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source, target, fstype, flags, data=None) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    _call(LIBC.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          f"mount {source} on {target}")


def _enter_namespaces(host_uid: int, host_gid: int) -> None:
    """unshare, then map uid/gid 0 inside to host_uid/host_gid (written by a helper still outside when root)."""
    flags = 0
    for value in CLONE.values():
        flags |= value
    maps = {"setgroups": "deny", "uid_map": f"0 {host_uid} 1", "gid_map": f"0 {host_gid} 1"}
    if os.geteuid() != 0:
        _call(LIBC.unshare(flags), "unshare")
        for name, text in maps.items():
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
        return
    target = os.getpid()
    ready_r, ready_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # stays in the host's namespaces: only it may map root's process to another uid
        try:
            os.close(ready_w)
            if os.read(ready_r, 1) == b"u":
                for name, text in maps.items():
                    with open(f"/proc/{target}/{name}", "w") as handle:
                        handle.write(text)
                os._exit(0)
        finally:
            os._exit(1)
    os.close(ready_r)
    try:
        _call(LIBC.unshare(flags), "unshare")
    finally:
        os.write(ready_w, b"u")
        os.close(ready_w)
        _, status = os.waitpid(helper, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError("could not write the user namespace's uid/gid maps")


def _locked_flags(fd: int) -> int:
    """The flags a user namespace may not clear on a bind (they are kept, plus read-only)."""
    flags = os.statvfs(fd).f_flag
    out = 0
    for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                   (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME)):
        if flags & st:
            out |= ms
    return out


def _open_sources(config: dict) -> list[tuple]:
    """Each bind source as a symlink to recreate or an O_PATH handle, opened before switching to the mapped
    uid, which may not be able to look the path up (a Python under /root, say)."""
    sources = []
    for source, target in config["binds"]:
        if os.path.islink(source) and os.path.dirname(source) == "/":  # /bin -> usr/bin on a merged-/usr system
            sources.append(("link", os.readlink(source), target))
        elif os.path.exists(source):
            sources.append(("dir" if os.path.isdir(source) else "file", os.open(source, os.O_PATH), target))
    for name in DEVICES:
        sources.append(("file", os.open(f"/dev/{name}", os.O_PATH), f"/dev/{name}"))
    return sources


def _build_root(config: dict, sources: list[tuple]) -> None:
    root, work = config["root"], config["work"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,nr_inodes=4096,mode=755,uid=0,gid=0")
    for kind, handle, target in sources:
        inside = root + target
        if kind == "link":
            os.symlink(handle, inside)
            continue
        if kind == "dir":
            os.makedirs(inside, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            open(inside, "w").close()
        _mount(f"/proc/self/fd/{handle}", inside, None, MS_BIND | MS_REC)
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | _locked_flags(handle)
        if target.startswith("/dev/"):
            flags &= ~MS_NODEV
        _mount(None, inside, None, flags)
        os.close(handle)
    os.makedirs(root + work)
    _mount("tmpfs", root + work, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={config['disk_mb']}m,nr_inodes={config['max_files']},mode=755,uid=0,gid=0")
    os.chdir(root)
    _call(LIBC.syscall(PIVOT_ROOT[os.uname().machine], b".", b"."), "pivot_root")
    _call(LIBC.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _drop_privileges(cap_last: int) -> None:
    _call(LIBC.prctl(PR_SET_SECUREBITS, SECURE_ALL, 0, 0, 0), "securebits")
    for cap in range(cap_last + 1):
        _call(LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _call(LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _limits(config: dict) -> None:
    import resource

    memory = config["memory_mb"] * 1024 * 1024
    cpu = int(config["timeout_s"]) + 1
    for limit, value in ((resource.RLIMIT_AS, (memory, memory)), (resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_FSIZE, (config["file_bytes"],) * 2), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_NPROC, (config["processes"],) * 2)):
        resource.setrlimit(limit, value)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _init(config: dict) -> None:
    """PID 1 of the namespace: start the program, reap orphans, end with the program (the kernel then kills the rest)."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    program = os.fork()
    if program == 0:
        try:
            _drop_privileges(config["cap_last"])
            _limits(config)
            os.chdir(config["work"])
            os.execve(config["command"][0], config["command"], config["env"])
        finally:
            os._exit(125)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == program:
            os._exit(_exit_code(status))


def main() -> None:
    config = json.loads(sys.argv[1])
    try:
        for procs in config["cgroups"]:
            with open(procs, "w") as handle:
                handle.write(str(os.getpid()))
        if os.geteuid() == 0:
            os.setgroups([])
        _enter_namespaces(config["host_uid"], config["host_gid"])
        sources = _open_sources(config)  # the new mount namespace's copies, still looked up as the caller
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)  # the mapped uid (host_uid outside); the namespace's capabilities stay until exec
        _build_root(config, sources)
        LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        init = os.fork()
    except Exception as err:  # noqa: BLE001 - any setup failure: report it, run nothing
        print(f"sandbox setup failed: {err}", file=sys.stderr)
        os._exit(125)
    if init == 0:
        try:
            _init(config)
        finally:
            os._exit(125)
    _, status = os.waitpid(init, 0)
    os._exit(_exit_code(status))


if __name__ == "__main__":
    main()
