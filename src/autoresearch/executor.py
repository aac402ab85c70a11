"""Executors: where the target's commands run. `local` runs them as processes here: a Python script forked
from a warm server per slot and kind of command (forkserver.py, Linux), anything else as a child process.

An executor has slots (a GPU each, or a share of the CPU) and runs one job per slot at a time.
It enforces the wall-clock limit from outside: the job runs in its own process group, which is
sent SIGTERM at the deadline and SIGKILL a few seconds later, so a training script that ignores
its budget (or signals) cannot outlive it. A job with a jail runs isolated and one with limits is
watched, both through sandbox.py: over a limit, its whole group is SIGKILLed and the result says why.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import forkserver, sandbox
from .sandbox import Jail, Limits

KILL_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class Slot:
    """A place a job can run: a device and the CPU threads that go with it."""

    name: str
    device: str = "auto"
    threads: int = 1
    visible_devices: Optional[str] = None  # CUDA_VISIBLE_DEVICES for its runs (a GPU slot: one physical GPU)
    cpus: tuple = ()  # the CPU cores its runs are pinned to (Linux; empty: no pinning)


@dataclass(frozen=True)
class Job:
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    timeout: float
    log_path: Path
    pid_file: Optional[Path] = None  # names the job's process group while it runs (see kill_leftovers)
    jail: Optional[Jail] = None      # run isolated (where possible; see Jail.required)
    limits: Optional[Limits] = None  # resource limits, enforced from outside
    # A Python script (or module) importing these installed modules: it may be forked from a warm server that
    # has imported them (forkserver.py). None: not a Python script, or not to be forked.
    preload: Optional[tuple[str, ...]] = None


@dataclass(frozen=True)
class JobResult:
    exit_code: Optional[int]
    seconds: float
    timed_out: bool = False
    interrupted: bool = False
    peak_rss_mb: Optional[float] = None
    limit: str = ""                   # which resource limit killed the job, e.g. "memory limit 8.0 GiB exceeded (...)"
    overshoot: Optional[float] = None  # timed out: seconds from the hard limit until its process group was gone


class JobHandle(ABC):
    @abstractmethod
    def wait(self) -> JobResult:
        """Block until the job ends (or is killed at its deadline)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop the job now; `wait` then reports it interrupted."""


class Executor(ABC):
    """Runs jobs on slots. `interrupt()` (from any thread) stops every job in flight: each reports interrupted."""

    name: str = ""
    stop: threading.Event  # set by interrupt(); created on first use

    @abstractmethod
    def slots(self) -> list[Slot]:
        ...

    def interrupt(self) -> None:
        self.stopping().set()

    def stopping(self) -> threading.Event:
        if "stop" not in self.__dict__:
            self.stop = threading.Event()
        return self.stop

    def execute(self, runner, spec, slot: Slot):
        """One whole run (train, checks, evaluate) of `spec` on `slot`: a RunRecord. Here, through `runner`;
        a remote executor ships the run elsewhere (ray_executor.py)."""
        return runner.run(spec, slot)

    def close(self) -> None:
        """Give back what the executor holds (a cluster connection, warm servers)."""

    def warm(self, job: Job, slot: Slot) -> None:
        """Get ready to start jobs like `job` on `slot` soon (the local executor starts its fork server)."""

    @abstractmethod
    def start(self, job: Job, slot: Slot) -> JobHandle:
        ...

    def run(self, job: Job, slot: Slot) -> JobResult:
        handle = self.start(job, slot)
        try:
            return handle.wait()
        except BaseException:
            handle.cancel()
            raise


# ---------------------------------------------------------------------------- local


class _LocalHandle(JobHandle):
    """A job running here as a process group of its own: its deadline, its limits and its pid file. Started by
    a subclass, which says how to learn its exit status (`_reap`)."""

    pid: int
    exit_code: Optional[int] = None

    def _watch(self, job: Job, pid: int, stop: Optional[threading.Event], log_start: int) -> None:
        self.job, self.pid, self.stop = job, pid, stop
        self.started = time.monotonic()
        self.monitor = sandbox.Monitor(pid, job.limits, job.log_path, log_start) if job.limits else None
        self.pidfd = _pidfd(pid)
        self.cancelled = False
        if job.pid_file:
            _write_pid_file(job.pid_file, pid)

    def _reap(self, block: bool) -> Optional[tuple[int, float]]:
        """(exit code, peak RSS in MB) once the process has ended, else None."""
        raise NotImplementedError

    def _signal_group(self, sig: int) -> bool:
        """Signal the job's process group; False when none of it is left."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake as soon as the job's process ends where the OS can say so (a pidfd, Linux)."""
        if self.pidfd is None:
            time.sleep(seconds)
        else:
            select.select([self.pidfd], [], [], seconds)

    def _end_group(self) -> float:
        """Kill whatever the job left behind in its group, forget its pid file; when the group was gone."""
        left = self._signal_group(signal.SIGKILL)
        gone = sandbox.wait_gone(self.pid) if left else time.monotonic()
        if self.job.pid_file:
            self.job.pid_file.unlink(missing_ok=True)
        return gone

    def _close(self) -> None:
        if self.monitor:
            self.monitor.stop()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _kill(self) -> tuple[int, float]:
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_SECONDS
        while (done := self._reap(block=False)) is None and time.monotonic() < deadline:
            self._pause(0.02)
        self._signal_group(signal.SIGKILL)
        return done or self._reap(block=True)

    def wait(self) -> JobResult:
        deadline = self.started + self.job.timeout
        pause = 0.002
        timed_out = False
        while (done := self._reap(block=False)) is None:
            if self.stop is not None and self.stop.is_set():
                self.cancelled = True
            if self.cancelled or time.monotonic() >= deadline:
                timed_out = not self.cancelled
                done = self._kill()
                break
            self._pause(pause)
            pause = min(pause * 2, 0.05)
        self.exit_code = done[0]
        gone = self._end_group()
        seconds = time.monotonic() - self.started
        overshoot = gone - deadline if timed_out else None
        peak = done[1]
        limit = ""
        self._close()
        if self.monitor:
            limit = self.monitor.finish_log()
            peak = max(peak, self.monitor.peak_rss / 2**20)
        if overshoot is not None:
            with open(self.job.log_path, "a") as log:
                log.write(f"\n[autoresearch] hard limit of {self.job.timeout:g}s reached: SIGTERM to the process "
                          f"group, which was gone {overshoot:.2f}s after the limit\n")
        return JobResult(exit_code=done[0], seconds=seconds, timed_out=timed_out, interrupted=self.cancelled,
                         peak_rss_mb=peak or None, limit=limit, overshoot=overshoot)

    def cancel(self) -> None:
        self.cancelled = True
        if self.exit_code is None:
            self.exit_code = self._kill()[0]
            self._end_group()
        self._close()


class _SpawnedHandle(_LocalHandle):
    """A job started as a child process of the harness."""

    def __init__(self, job: Job, stop: Optional[threading.Event] = None, cpus: tuple = ()):
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        jailed = job.jail is not None and sandbox.check("required" if job.jail.required else "auto")
        argv = sandbox.command(job.argv, job.jail if jailed else None, job.limits)
        with open(job.log_path, "ab") as log:
            log_start = log.tell()
            self.process = subprocess.Popen(argv, cwd=job.cwd, env=job.env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _pin(self.process.pid, cpus)
        self._watch(job, self.process.pid, stop, log_start)

    def _reap(self, block: bool) -> Optional[tuple[int, float]]:
        return _wait4(self.process, block)


class _ForkedHandle(_LocalHandle):
    """A job forked by a warm server (forkserver.py) for its kind of job on its slot."""

    def __init__(self, job: Job, server: "_ForkServer", stop: Optional[threading.Event] = None):
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.server = server
        with open(job.log_path, "ab") as log:
            log_start = log.tell()
            pid = server.submit(job, log.fileno())
        self._watch(job, pid, stop, log_start)

    def _reap(self, block: bool) -> Optional[tuple[int, float]]:
        return self.server.result(self.pid, block)

    def _pause(self, seconds: float) -> None:
        """Sleep, but wake when the server says something (the job has ended)."""
        select.select([self.server.channel], [], [], seconds)


class _ForkServer:
    """A warm server (forkserver.py) for one slot's jobs of one kind, started in the sandbox they get, with the
    environment they get less AUTORESEARCH_*. It serves jobs one at a time; `key` says which jobs it can serve."""

    START_SECONDS = 300.0  # how long the first job may wait for the server's imports before it is run without it

    def __init__(self, job: Job, key: tuple, cpus: tuple):
        self.key = key
        self.pid_file = job.pid_file.with_name(job.pid_file.stem + ".server.pid") if job.pid_file else None
        self.channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        jailed = job.jail is not None and sandbox.check("required" if job.jail.required else "auto")
        argv = sandbox.command([job.argv[0], forkserver.__file__, "--preload", ",".join(job.preload or ())],
                               job.jail if jailed else None, job.limits)
        log = self.pid_file.with_suffix(".log") if self.pid_file else Path(os.devnull)
        log.parent.mkdir(parents=True, exist_ok=True)
        with theirs, open(log, "ab") as out:
            self.process = subprocess.Popen(argv, cwd=job.cwd, env=_server_env(job.env), stdin=theirs, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        _pin(self.process.pid, cpus)
        if self.pid_file:
            _write_pid_file(self.pid_file, self.process.pid)
        self.ended: dict[int, tuple[int, float]] = {}
        self.ready = False  # it has forked a job: its imports are done

    def submit(self, job: Job, log_fd: int) -> int:
        """Fork `job` (its output to `log_fd`); the child's pid. Raises OSError when the server cannot."""
        message = json.dumps({"argv": job.argv, "cwd": str(job.cwd), "env": job.env}).encode()
        socket.send_fds(self.channel, [message], [log_fd])
        reply = self._receive(None if self.ready else min(self.START_SECONDS, job.timeout))
        if reply is None or "pid" not in reply or "exit" in reply:
            raise OSError("the fork server did not start the job")
        self.ready = True
        return int(reply["pid"])

    def result(self, pid: int, block: bool) -> Optional[tuple[int, float]]:
        """(exit code, peak RSS in MB) once job `pid` has ended, else None. A server gone reports -1."""
        while pid not in self.ended:
            reply = self._receive(None if block else 0.0)
            if reply is None:
                if block or self.process.poll() is not None:
                    return (-1, 0.0)
                return None
            if "exit" in reply:
                self.ended[int(reply["pid"])] = (int(reply["exit"]), reply.get("maxrss_kb", 0) / 1024)
        return self.ended.pop(pid)

    def _receive(self, timeout: Optional[float]) -> Optional[dict]:
        """The server's next message; None at the timeout or when it has gone."""
        if timeout is not None and not select.select([self.channel], [], [], timeout)[0]:
            return None
        try:
            message = self.channel.recv(forkserver.MESSAGE_BYTES)
        except OSError:
            return None
        return json.loads(message) if message else None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        self.channel.close()  # it exits when it sees the socket closed; its group is killed all the same
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        if self.pid_file:
            self.pid_file.unlink(missing_ok=True)


def _server_env(env: dict[str, str]) -> dict[str, str]:
    """A job's environment less what changes from run to run (seed, budget, split): what its server starts with."""
    return {k: v for k, v in env.items() if not k.startswith("AUTORESEARCH_")}


def _server_name(job: Job, slot: Slot) -> tuple[str, str]:
    """Which of the executor's servers a job would use: one per slot and kind of job (its pid file's name)."""
    return slot.name, job.pid_file.name if job.pid_file else ""


def _server_key(job: Job, cpus: tuple) -> tuple:
    """What a server fixes for the jobs it forks: its sandbox (the mounts are made when it starts, so a
    directory made anew since is a different one), limits, environment, interpreter, imports and cores."""
    def identity(path: Path) -> tuple:
        try:
            stat = path.stat()
        except OSError:
            return (str(path), None)
        return (str(path), stat.st_dev, stat.st_ino)

    jail = job.jail and (job.jail, tuple(identity(p) for p in (*job.jail.writable, *job.jail.hidden)))
    return (jail, job.limits, tuple(sorted(_server_env(job.env).items())), job.argv[0], job.preload, cpus)


class LocalExecutor(Executor):
    """Child processes on this machine: one slot per visible GPU, or one CPU slot. On Linux, a job that is a
    Python script (Job.preload) is forked from a warm server per slot and kind of job (forkserver.py)."""

    name = "local"

    forks = sys.platform.startswith("linux") and hasattr(os, "fork")

    def __init__(self, device: str = "auto", slots: Optional[int] = None):
        self._slots = local_slots(device, slots)
        self._servers: dict[tuple[str, str], _ForkServer] = {}
        self._lock = threading.Lock()

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def start(self, job: Job, slot: Slot) -> JobHandle:
        server = self._server(job, slot)
        if server is not None:
            try:
                return _ForkedHandle(job, server, self.stopping())
            except OSError:  # the server died or never got ready: this job starts as a process of its own
                self._retire(job, slot)
        return _SpawnedHandle(job, self.stopping(), slot.cpus)

    def warm(self, job: Job, slot: Slot) -> None:
        self._server(job, slot)

    def _server(self, job: Job, slot: Slot) -> Optional[_ForkServer]:
        """The slot's server for `job`, started now where there is none that can serve it."""
        if not (self.forks and job.preload is not None):
            return None
        key, name = _server_key(job, slot.cpus), _server_name(job, slot)
        with self._lock:
            server = self._servers.get(name)
            if server is not None and (server.key != key or not server.alive()):
                server.close()
                server = None
            if server is None:
                server = self._servers[name] = _ForkServer(job, key, slot.cpus)
            return server

    def _retire(self, job: Job, slot: Slot) -> None:
        with self._lock:
            server = self._servers.pop(_server_name(job, slot), None)
        if server is not None:
            server.close()

    def close(self) -> None:
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()


def _pin(pid: int, cpus: tuple) -> None:
    """Pin a process to the slot's cores (Linux), before it starts its threads."""
    if cpus and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass


def _write_pid_file(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid} {_start_time(pid)}")


def _wait4(process: subprocess.Popen, block: bool) -> Optional[tuple[int, float]]:
    """(exit code, peak RSS in MB) once the child `process` has ended, else None."""
    try:
        pid, status, usage = os.wait4(process.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return (process.returncode if process.returncode is not None else -1, 0.0)
    if pid == 0:
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return process.returncode, usage.ru_maxrss * scale


def kill_leftovers(directory: Path) -> list[int]:
    """Kill the process groups of jobs whose harness died (SIGKILL) while they ran.

    Their pid files survive the harness; a pid counts only while it still names the same process
    (same start time), so a reused pid is never hit.
    """
    killed = []
    for pid_file in Path(directory).glob("*.pid"):
        try:
            pid, started = pid_file.read_text().split()
            if _start_time(int(pid)) == started:
                os.killpg(int(pid), signal.SIGKILL)
                killed.append(int(pid))
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        pid_file.unlink(missing_ok=True)
    return killed


def _pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3
        return None


def _start_time(pid: int) -> str:
    """When process `pid` started (clock ticks since boot on Linux; elsewhere the group it leads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except OSError:
        try:
            return f"group{os.getpgid(pid)}"
        except OSError:
            return "gone"
    except IndexError:
        return "unknown"


def local_slots(device: str, count: Optional[int]) -> list[Slot]:
    """One slot per visible GPU (or `count` of them, sharing GPUs round-robin past one each), each seeing only its
    GPU through CUDA_VISIBLE_DEVICES; else `count` CPU slots (default 1) that split the cores between them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = _visible_gpus() if device in ("auto", "cuda") or device.startswith("cuda:") else []
    if device.startswith("cuda:") and gpus:
        gpus = [gpus[int(device[5:]) % len(gpus)]]
    if gpus:
        count = count or len(gpus)
        share = max(1, len(cores) // count)
        return [Slot(f"gpu{i}", "cuda", share, visible_devices=gpus[i % len(gpus)],
                     cpus=_share(cores, i, count)) for i in range(count)]
    count = count or 1  # "auto" stays auto: the run itself picks Apple's GPU or the CPU
    if count == 1:
        return [Slot("cpu0", device, len(cores))]
    return [Slot(f"cpu{i}", device, max(1, len(cores) // count), cpus=_share(cores, i, count)) for i in range(count)]


def _share(cores: list[int], i: int, count: int) -> tuple:
    """Slot i's cores out of `count` slots: a contiguous block; with fewer cores than slots, one core, shared."""
    if len(cores) < count:
        return (cores[i % len(cores)],)
    size = len(cores) // count
    return tuple(cores[i * size:(i + 1) * size])


def _visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them, without importing torch into
    the harness (it costs seconds)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        names = []
        for name in (d.strip() for d in visible.split(",")):
            if not name or name == "-1":
                break  # CUDA ignores everything from an invalid entry on
            names.append(name)
        return names
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(l for l in out.stdout.splitlines() if l.startswith("GPU "))]
