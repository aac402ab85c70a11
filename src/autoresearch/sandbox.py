"""The run sandbox: OS isolation and resource limits for the target's commands (harness side).

A job with a `Jail` runs as

    unshare [--user --map-root-user] --net --mount --propagation private -- \\
        python -I -S launcher.py --jail --ro ROOT --rw WORKTREE --rw OUT --hide DATA/val.bin ... -- ARGV

where launcher.py finishes the jail inside the new namespaces and execs ARGV (same pid, so the
executor's process-group handling is unchanged): the read-only paths (the target repository, the
Python installation) are bound read-only, the writable ones (the run's worktree and output
directory) read-write again inside them, hidden paths (held-out data) are covered, every
capability is dropped. The network namespace has no route out: not even a server on the host's
127.0.0.1 is reachable. Root needs no user namespace; anyone else needs unprivileged ones.

Without a jail (macOS, a container that forbids user namespaces, `isolate = "off"`) the launcher
only sets the rlimits. Either way `Monitor` polls the job's process group from /proc and
SIGKILLs it when its total RSS, its process count or its log goes over the limit.

This is damage control for a run the harness does not trust, not a security boundary against a
determined attacker: the run keeps your uid, sees the host's processes, /tmp and your home
directory, and shares the GPUs. See the threat model in docs/security.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

UNSHARE = "unshare"     # util-linux's unshare; AUTORESEARCH_UNSHARE overrides it (tests point it at nothing)
POLL_SECONDS = 0.25     # how often a running job's process group is measured
NPROC_PER_PROCESS = 16  # RLIMIT_NPROC counts threads: room for this many per allowed process
GONE_WAIT_SECONDS = 2.0  # how long to wait for a killed process group to be gone from /proc
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")

_probed: dict[str, Optional[str]] = {}
_warned: set[str] = set()


class SandboxError(Exception):
    """Isolation is required but unavailable; the message says why and how to enable it."""


@dataclass(frozen=True)
class Jail:
    """What a jailed job sees of the file system. Later kinds win where paths nest."""

    readonly: tuple[Path, ...] = ()   # bound read-only (recursively)
    writable: tuple[Path, ...] = ()   # bound read-write again, typically inside a read-only path
    hidden: tuple[Path, ...] = ()     # covered: a directory by an empty tmpfs, a file by /dev/null
    required: bool = False            # refuse to run unjailed where isolation is unavailable


@dataclass(frozen=True)
class Limits:
    """Per-job resource limits; None means no limit."""

    memory: Optional[int] = None      # bytes of RSS, summed over the job's process group
    processes: Optional[int] = None   # processes in the group
    open_files: Optional[int] = None  # RLIMIT_NOFILE
    output: Optional[int] = None      # bytes the job may add to its log (stdout and stderr)


# ---------------------------------------------------------------------------- sizes


def machine_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parse_size(text: str) -> int:
    """Bytes from "8G", "512MiB", "64M", "1.5GB", "4096" (binary units) or "80%" (of this machine's RAM)."""
    value = str(text).strip().upper().replace(" ", "")
    if value.endswith("%"):
        share = float(value[:-1])
        if not 0 < share <= 100:
            raise ValueError("a percentage of the machine's memory must be in (0, 100]")
        return int(machine_memory() * share / 100)
    value = value.removesuffix("B").removesuffix("I")
    scale = 1
    for power, unit in enumerate("KMGT", start=1):
        if value.endswith(unit):
            scale, value = 1024 ** power, value[:-1]
    try:
        size = int(float(value) * scale)
    except (ValueError, OverflowError):
        raise ValueError("expected a size like 8G, 512M or 80%") from None
    if size <= 0:
        raise ValueError("a size must be positive")
    return size


def format_size(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------- capability probe


def unshare_binary() -> str:
    return os.environ.get("AUTORESEARCH_UNSHARE") or UNSHARE


def unavailable() -> Optional[str]:
    """Why jobs cannot be jailed here, or None when they can. Probed once per process (per unshare binary)."""
    binary = unshare_binary()
    if binary not in _probed:
        _probed[binary] = _probe(binary)
    return _probed[binary]


def _probe(binary: str) -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return f"Linux namespaces do not exist on {sys.platform}"
    if shutil.which(binary) is None:
        return f"`{binary}` (util-linux) was not found"
    with tempfile.TemporaryDirectory(prefix="autoresearch-probe-") as tmp:
        root = Path(tmp)
        for sub in ("rw", "hidden"):
            (root / sub).mkdir()
        (root / "hidden.txt").write_text("")
        jail = Jail(readonly=(root,), writable=(root / "rw",), hidden=(root / "hidden", root / "hidden.txt"))
        try:
            done = subprocess.run(command(["true"], jail, Limits(open_files=256), unshare=binary),
                                  capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{binary}` failed: {exc}"
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return f"`{binary}` failed: {lines[-1] if lines else f'exit code {done.returncode}'}"
    return None


EXPOSED = ("They can use the network, read the held-out data beside their training data, and write anything "
           "your user can, the ledger and the research branch included.")
HOW_TO_ENABLE = ("To isolate them on Linux: install util-linux (unshare) and allow unprivileged user namespaces "
                 "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; on Ubuntu 24.04 "
                 "also kernel.apparmor_restrict_unprivileged_userns=0), or run the harness as root.")


def check(isolate: str) -> bool:
    """Whether jobs will be jailed under `isolate` (auto | required | off). Says once per process what is not
    isolated when isolation is unavailable; raises SandboxError when it is required."""
    if isolate == "off":
        return False
    reason = unavailable()
    if reason is None:
        return True
    if isolate == "required":
        raise SandboxError(f"[sandbox] isolate = \"required\", but runs cannot be isolated on this machine "
                           f"({reason}); nothing was run. {HOW_TO_ENABLE}")
    if reason not in _warned:
        _warned.add(reason)
        message = (f"autoresearch: warning: runs are NOT isolated on this machine ({reason}). {EXPOSED} "
                   f"{HOW_TO_ENABLE} Set [sandbox] isolate = \"required\" to refuse to run unisolated, or "
                   "\"off\" to silence this.")
        print(message, file=sys.stderr)
    return False


# ---------------------------------------------------------------------------- the command line


def python_paths() -> tuple[Path, ...]:
    """The Python installation and this package, where this user can write them: a run must not plant code
    that the harness or the evaluator would import."""
    import site

    candidates = {Path(sys.prefix), Path(sys.base_prefix), Path(site.getusersitepackages()), LAUNCHER.parent}
    return tuple(sorted(p for p in candidates if p != Path("/") and p.is_dir() and os.access(p, os.W_OK)))


def command(argv: list[str], jail: Optional[Jail], limits: Optional[Limits],
            unshare: Optional[str] = None) -> list[str]:
    """`argv` wrapped in the launcher (and, with a jail, in unshare)."""
    if jail is None and limits is None:
        return list(argv)
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER)]
    prefix: list[str] = []
    if jail is not None:
        prefix = [unshare or unshare_binary(), *([] if os.geteuid() == 0 else ["--user", "--map-root-user"]),
                  "--net", "--mount", "--propagation", "private", "--"]
        launcher.append("--jail")
        for flag, paths in (("--ro", jail.readonly), ("--rw", jail.writable), ("--hide", jail.hidden)):
            for path in paths:
                launcher += [flag, str(path)]
    if limits is not None:
        if limits.open_files:
            launcher += ["--nofile", str(limits.open_files)]
        if limits.processes and jail is not None and _nproc_is_per_namespace():
            launcher += ["--nproc", str(limits.processes * NPROC_PER_PROCESS)]
    return [*prefix, *launcher, "--", *argv]


def _nproc_is_per_namespace() -> bool:
    """RLIMIT_NPROC counts a user's tasks; inside a fresh user namespace on Linux >= 5.14 only the ones in it.
    Root is exempt, and elsewhere it would count all your processes, so it is set only there."""
    if os.geteuid() == 0:
        return False
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


# ---------------------------------------------------------------------------- watching a running job


def group_usage(pgid: int) -> Optional[tuple[int, int]]:
    """(processes, total RSS in bytes) of process group `pgid`, zombies excluded; None without /proc."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    count = rss = 0
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            count += 1
            rss += int(fields[21]) * page
    return count, rss


def wait_gone(pgid: int, timeout: float = GONE_WAIT_SECONDS) -> float:
    """Wait until no process of group `pgid` is left (zombies aside); the monotonic time it was seen gone."""
    deadline = time.monotonic() + timeout
    while True:
        usage = group_usage(pgid)
        now = time.monotonic()
        if usage is None or usage[0] == 0 or now >= deadline:
            return now
        time.sleep(0.005)


class Monitor:
    """A thread that measures a job's process group every POLL_SECONDS and SIGKILLs it over a limit.

    `reason` says which limit ended the job ("" while none did); `peak_rss` is the largest group RSS seen.
    """

    def __init__(self, pgid: int, limits: Limits, log_path: Path, log_start: int):
        self.pgid, self.limits, self.log_path, self.log_start = pgid, limits, Path(log_path), log_start
        self.reason = ""
        self.killed = False
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"monitor-{pgid}", daemon=True)
        self._thread.start()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            if self.check():
                return

    def check(self) -> str:
        """Measure once; kill the group and return the reason when a limit is exceeded."""
        if self.reason:
            return self.reason
        limits, reason = self.limits, ""
        written = self._log_size() - self.log_start
        usage = group_usage(self.pgid)
        if usage is not None:
            processes, rss = usage
            self.peak_rss = max(self.peak_rss, rss)
            if limits.memory and rss > limits.memory:
                reason = f"memory limit {format_size(limits.memory)} exceeded (group RSS {format_size(rss)})"
            elif limits.processes and processes > limits.processes:
                reason = f"process limit {limits.processes} exceeded ({processes} processes in the group)"
        if not reason and limits.output and written > limits.output:
            reason = f"output limit {format_size(limits.output)} exceeded (wrote {format_size(written)})"
        if reason:
            self.reason, self.killed = reason, True
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return reason

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def finish_log(self) -> str:
        """After the group is gone: cut an oversized log at the limit and say in it why the job was killed.
        Returns that reason ("" when no limit was hit)."""
        if self.limits.output and self._log_size() - self.log_start > self.limits.output:
            with open(self.log_path, "r+b") as log:
                log.truncate(self.log_start + self.limits.output)
            self.reason = self.reason or (f"output limit {format_size(self.limits.output)} exceeded "
                                          "(the run wrote more before it ended)")
        if self.reason:
            with open(self.log_path, "a") as log:
                log.write(f"\n[autoresearch] {'killed' if self.killed else 'output cut here'}: {self.reason}\n")
        return self.reason
