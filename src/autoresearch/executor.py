"""Executors: where the target's commands run. `local` runs them as child processes here.

An executor has slots (a GPU each, or a share of the CPU) and runs one job per slot at a time.
It enforces the wall-clock limit from outside: the job runs in its own process group, which is
sent SIGTERM at the deadline and SIGKILL a few seconds later, so a training script that ignores
its budget (or signals) cannot outlive it. A job with a jail runs isolated and one with limits is
watched, both through sandbox.py: over a limit, its whole group is SIGKILLed and the result says why.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import prestart, sandbox
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
    held: bool = False               # started ahead of its turn (prestart.py): runs from `release()`, timed from it


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
    def release(self) -> None:
        """Let a held job run (prestart.py); its wall-clock limit counts from here. Nothing for other jobs."""

    @abstractmethod
    def wait(self) -> JobResult:
        """Block until the job ends (or is killed at its deadline)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop the job now; `wait` then reports it interrupted."""


class Executor(ABC):
    """Runs jobs on slots. `interrupt()` (from any thread) stops every job in flight: each reports interrupted."""

    name: str = ""
    holds = False  # can start a job held (Job.held), to be released later
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
        """Give back what the executor holds (a cluster connection)."""

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


EXECUTORS: dict[str, Callable[..., Executor]] = {}


def register(name: str):
    def decorate(cls):
        cls.name = name
        EXECUTORS[name] = cls
        return cls
    return decorate


# ---------------------------------------------------------------------------- local


class _LocalHandle(JobHandle):
    def __init__(self, job: Job, stop: Optional[threading.Event] = None, cpus: tuple = ()):
        self.job = job
        self.stop = stop
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        jailed = job.jail is not None and sandbox.check("required" if job.jail.required else "auto")
        argv = sandbox.command(job.argv, job.jail if jailed else None, job.limits)
        self.started = time.monotonic()
        with open(job.log_path, "ab") as log:
            log_start = log.tell()
            self.process = subprocess.Popen(argv, cwd=job.cwd, env=job.env,
                                            stdin=subprocess.PIPE if job.held else subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if cpus and hasattr(os, "sched_setaffinity"):  # the slot's cores, before the program starts its threads
            try:
                os.sched_setaffinity(self.process.pid, cpus)
            except OSError:
                pass
        self.monitor = sandbox.Monitor(self.process.pid, job.limits, job.log_path, log_start) if job.limits else None
        self.pidfd = _pidfd(self.process.pid)
        self.cancelled = False
        if job.pid_file:
            job.pid_file.parent.mkdir(parents=True, exist_ok=True)
            job.pid_file.write_text(f"{self.process.pid} {_start_time(self.process.pid)}")

    def release(self) -> None:
        if self.process.stdin is None:
            return
        self.started = time.monotonic()
        try:
            self.process.stdin.write(prestart.GO)
            self.process.stdin.close()
        except OSError:  # it ended while held: `wait` reports how
            pass

    def _signal_group(self, sig: int) -> bool:
        """Signal the job's process group; False when none of it is left."""
        try:
            os.killpg(self.process.pid, sig)
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
        gone = sandbox.wait_gone(self.process.pid) if left else time.monotonic()
        if self.job.pid_file:
            self.job.pid_file.unlink(missing_ok=True)
        return gone

    def _close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:  # cancelled while held
            try:
                self.process.stdin.close()
            except OSError:
                pass
        if self.monitor:
            self.monitor.stop()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _reap(self, block: bool) -> Optional[tuple[int, float]]:
        """(exit code, peak RSS in MB) once the process has ended, else None."""
        try:
            pid, status, usage = os.wait4(self.process.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return (self.process.returncode if self.process.returncode is not None else -1, 0.0)
        if pid == 0:
            return None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
        return self.process.returncode, usage.ru_maxrss * scale

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
        if self.process.returncode is None:
            self._kill()
            self._end_group()
        self._close()


@register("local")
class LocalExecutor(Executor):
    """Child processes on this machine: one slot per visible GPU, or one CPU slot."""

    holds = True

    def __init__(self, device: str = "auto", workers: Optional[int] = None):
        self._slots = local_slots(device, workers)

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def start(self, job: Job, slot: Slot) -> JobHandle:
        return _LocalHandle(job, self.stopping(), slot.cpus)


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


def local_slots(device: str, workers: Optional[int]) -> list[Slot]:
    """One slot per visible GPU (or `workers` of them, sharing GPUs round-robin past one each), each seeing only its
    GPU through CUDA_VISIBLE_DEVICES; else `workers` CPU slots (default 1) that split the cores between them."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    gpus = _visible_gpus() if device in ("auto", "cuda") or device.startswith("cuda:") else []
    if device.startswith("cuda:") and gpus:
        gpus = [gpus[int(device[5:]) % len(gpus)]]
    if gpus:
        count = workers or len(gpus)
        share = max(1, len(cores) // count)
        return [Slot(f"gpu{i}", "cuda", share, visible_devices=gpus[i % len(gpus)],
                     cpus=_share(cores, i, count)) for i in range(count)]
    count = workers or 1  # "auto" stays auto: the run itself picks Apple's GPU or the CPU
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
