"""The sandbox's launcher: the few steps between the harness and a target's command.

    python -I -S launcher.py [--jail] [--ro P]... [--rw P]... [--hide P]... [--nofile N] [--nproc N] -- ARGV

It sets the rlimits (open files, processes; no core dumps) and execs ARGV, keeping its pid, so the
executor's process-group handling is unchanged. With --jail it runs inside the namespaces that
`unshare --net --mount [--user --map-root-user]` made (sandbox.py builds that command line), and
first finishes the jail: it binds the --ro paths read-only, the --rw paths read-write again, covers
each --hide path (a directory with an empty read-only tmpfs, a file with /dev/null), brings the
namespace's own loopback up, drops every capability (so the command cannot undo any of it), and
re-enters its working directory through the new mounts.

Started for every command, so it imports only what it needs: the standard library, lazily.
"""

import os
import resource
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
ST_NOSUID, ST_NODEV, ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 2, 4, 8, 1024, 2048, 4096  # statvfs
# (statvfs flag, mount flag): a remount must repeat these, as a user namespace may not change them
KEPT_FLAGS = ((ST_NOSUID, MS_NOSUID), (ST_NODEV, MS_NODEV), (ST_NOEXEC, MS_NOEXEC), (ST_NOATIME, MS_NOATIME),
              (ST_NODIRATIME, MS_NODIRATIME), (ST_RELATIME, MS_RELATIME))
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
SIOCSIFFLAGS, IFF_UP = 0x8914, 0x1
CAP_VERSION_3 = 0x20080522

_libc = None


def libc():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def mount(source, target: str, fstype, flags: int, data=None) -> None:
    import ctypes

    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    check(libc().mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)),
          f"mount {target}")


def bind(path: str, readonly: bool) -> None:
    mount(path, path, None, MS_BIND | MS_REC)
    current = os.statvfs(path).f_flag
    flags = sum(ms for st, ms in KEPT_FLAGS if current & st)
    if not current & (ST_NOATIME | ST_RELATIME):
        flags |= MS_STRICTATIME
    mount(None, path, None, MS_REMOUNT | MS_BIND | flags | (MS_RDONLY if readonly else 0))


def hide(path: str) -> None:
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=0555")
    else:
        mount("/dev/null", path, None, MS_BIND)


def loopback_up() -> None:
    """The namespace's own loopback, for programs that talk to themselves (torchrun's store); it reaches nothing
    outside."""
    import _socket  # not socket, which costs ten times as much to import
    import fcntl

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:  # struct ifreq: the interface's name in 16 bytes, then its flags (a short) in a 24-byte union
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, b"lo".ljust(16, b"\0") + IFF_UP.to_bytes(2, sys.byteorder) + bytes(22))
    finally:
        sock.close()


def drop_capabilities() -> None:
    """None survives, not even through exec as the namespace's root: the bounding set goes first."""
    import ctypes

    with open("/proc/sys/kernel/cap_last_cap") as handle:
        last = int(handle.read())
    for cap in range(last + 1):
        check(libc().prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP)")
    libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    check(libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)  # this process
    empty = (ctypes.c_uint32 * 6)()                   # effective, permitted, inheritable (two words each)
    check(libc().capset(header, empty), "capset")


def set_limit(name: str, limit: int, value: int) -> None:
    _, hard = resource.getrlimit(limit)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    try:
        resource.setrlimit(limit, (value, value))
    except (ValueError, OSError) as exc:  # e.g. above what macOS allows: run without it, and say so in the log
        print(f"launcher: could not limit {name} to {value}: {exc}", file=sys.stderr)


def main(args: list[str]) -> None:
    paths: dict[str, list[str]] = {"--ro": [], "--rw": [], "--hide": []}
    numbers: dict[str, int] = {}
    jail = False
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--jail":
            jail = True
        elif flag in paths and args:
            paths[flag].append(args.pop(0))
        elif flag in ("--nofile", "--nproc") and args:
            numbers[flag] = int(args.pop(0))
        else:
            raise SystemExit(f"launcher: unknown option {flag!r}")
    argv = args[1:]
    if not argv:
        raise SystemExit("launcher: no command after --")

    if jail:
        cwd = os.getcwd()
        for path in paths["--ro"]:
            if os.path.exists(path):
                bind(path, readonly=True)
        for path in paths["--rw"]:
            if os.path.exists(path):
                bind(path, readonly=False)
        for path in paths["--hide"]:
            if os.path.exists(path):
                hide(path)
        loopback_up()
    if "--nofile" in numbers:
        set_limit("open files", resource.RLIMIT_NOFILE, numbers["--nofile"])
    if "--nproc" in numbers:
        set_limit("processes", resource.RLIMIT_NPROC, numbers["--nproc"])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if jail:
        drop_capabilities()
        os.chdir(cwd)  # the old working directory is on the mounts as they were: re-enter through the new ones

    try:
        (os.execv if "/" in argv[0] else os.execvp)(argv[0], argv)
    except OSError as exc:
        print(f"launcher: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except OSError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        sys.exit(126)
