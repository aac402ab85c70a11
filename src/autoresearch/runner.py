"""One run: the target's train command, then its evaluate command, then the metric read back.

The run sees a scrubbed environment (an allow-list: no API keys or cloud credentials reach
training code), only the training part of the data, and an empty output directory. Where the OS
allows it, each command also runs jailed (sandbox.py): no network, the target read-only except its
worktree and output directory, the held-out data hidden from training; and always under the
[sandbox] resource limits. Its state is decided here: ok, crashed (non-zero exit, a resource
limit, no metric, NaN), timeout, interrupted, or rejected (the run tampered with what the
evaluator reads, see integrity.py, or the evaluator refused the model).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import forkserver, sandbox, snapshots
from .budget import Budget
from .executor import Executor, Job, JobResult, Slot
from . import guard, integrity
from .records import Flag, RunRecord, RunState
from .sandbox import Jail
from .target import Target, cache_dir, command_argv

# Variables a training process may see, by exact name or by prefix. Everything else is dropped.
ENV_NAMES = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "TZ", "TMPDIR", "SHELL", "LD_LIBRARY_PATH",
             "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "CUDA_HOME", "CUDA_PATH", "SYSTEMROOT"}
ENV_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "HIP_", "ROCR_", "ROCM_", "HSA_", "PYTORCH_", "TORCH_",
                "TORCHINDUCTOR_", "TRITON_", "OMP_", "MKL_", "KMP_", "XDG_", "MALLOC_")
# glibc's malloc, unless the user tunes it: blocks up to 32 MiB come from the heap, and freed memory stays with the
# process. By default a block over the (moving) mmap threshold is mapped and unmapped anew each time, and a fresh
# evaluation process faulted in ~1 GB this way per 131k tokens scored: 0.5-0.9 s of kernel time per run on a CPU.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
PRIVATE_COMPILE_CACHE = ".compile-cache"  # inside a held-out run's output directory, removed when it ends
LOG_TAIL_CHARS = 4000
_VARIABLE = re.compile(r"\$\{(AUTORESEARCH_[A-Z_]+)\}|\$(AUTORESEARCH_[A-Z_]+)")
EVALUATOR_REJECTS = 3  # an evaluator exiting with this status rejects the model (it broke a rule); see the contract
_NUMBER_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf|-inf)\s*$",
                          re.MULTILINE | re.IGNORECASE)


def compile_cache(split: str, out: Path, environ: dict[str, str]) -> Path:
    """Where torch.compile keeps what it compiled (inductor's FX graph and AOTAutograd caches, Triton's kernels). On
    the validation split, one directory per machine (or the user's TORCHINDUCTOR_CACHE_DIR): a graph compiled once
    loads in seconds in every later run, of every slot and session. Any run can write there and a later run loads
    what it finds, so a run could plant code that runs in another experiment's training: runs on the held-out test
    split (the confirmations and the end-of-session test) compile into a private, empty directory instead, so the
    numbers a session ends with never depend on what another run left there (docs/security.md)."""
    if split != "val":
        return out / PRIVATE_COMPILE_CACHE
    return Path(environ.get("TORCHINDUCTOR_CACHE_DIR") or cache_dir() / "torch-compile")


def scrubbed_environ(environ: Optional[dict] = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k in ENV_NAMES or k.startswith(ENV_PREFIXES)}


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; the run's files go to `directory`."""

    experiment_id: int
    worktree: Path
    seed: int
    budget: Budget
    timeout: float
    directory: Path
    split: str = "val"
    commit: Optional[str] = None  # the commit the worktree must be at; checked before and after training


def reported_numbers(text: str) -> dict[str, float]:
    """Every `key: number` line of a log, the last value of each key winning."""
    return {key: float(value) for key, value in _NUMBER_LINE.findall(text)}


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """`$AUTORESEARCH_SEED` or `${AUTORESEARCH_SEED}` in a command's words: the run's value (only the harness's own
    variables; others, and ones not set for this run, stay as written)."""
    def value(match: "re.Match") -> str:
        return env.get(match.group(1) or match.group(2), match.group(0))
    return [_VARIABLE.sub(value, word) for word in argv]


def pattern_metric(pattern: str, text: str) -> tuple[Optional[float], str]:
    """The number the last match of `[metric] pattern` captures in `text`, or why there is none."""
    found = re.findall(pattern, text, re.MULTILINE)
    if not found:
        return None, f"the output has no match of [metric] pattern {pattern!r}"
    try:
        return float(found[-1]), ""
    except ValueError:
        return None, f"[metric] pattern {pattern!r} captured {found[-1]!r}, which is not a number"


class Runner:
    def __init__(self, target: Target, executor: Executor, protected: Optional[dict[str, str]] = None):
        self.target = target
        self.executor = executor
        self.protected = protected  # {path: blob} every commit must carry (integrity.protected_blobs)

    def env(self, spec: RunSpec, slot: Slot, out: Path, data: Path) -> dict[str, str]:
        env = scrubbed_environ()
        env.update(spec.budget.env())
        env.update({
            "AUTORESEARCH_DATA": str(data),
            "AUTORESEARCH_OUT": str(out),
            "AUTORESEARCH_SEED": str(spec.seed),
            "AUTORESEARCH_DEVICE": slot.device,
            "AUTORESEARCH_THREADS": str(slot.threads),
            "AUTORESEARCH_SPLIT": spec.split,
            "AUTORESEARCH_CACHE": str(cache_dir()),
            "AUTORESEARCH_ISOLATE": self.target.config.sandbox.isolate,  # an evaluator's own jails follow it too
            "OMP_NUM_THREADS": str(slot.threads),
            "MKL_NUM_THREADS": str(slot.threads),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        if not any(name.startswith("MALLOC_") for name in env):
            env.update(MALLOC_TUNING)
        if self.target.config.run.snapshots:  # the training's files the harness copied as they appeared
            env["AUTORESEARCH_SNAPSHOTS"] = str(spec.directory / "snapshots")
        if slot.visible_devices is not None:  # a GPU slot sees its own GPU only
            env["CUDA_VISIBLE_DEVICES"] = slot.visible_devices
        cache = compile_cache(spec.split, out, env)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        if spec.split != "val":  # Triton's kernels too (by default inside the inductor cache; a user may move them)
            env["TRITON_CACHE_DIR"] = str(cache / "triton")
        return env

    def jail(self, writable: tuple[Path, ...], hidden: tuple[Path, ...] = ()) -> Optional[Jail]:
        """What a command may write and may not read; None with `[sandbox] isolate = "off"`."""
        box = self.target.config.sandbox
        if box.isolate == "off":
            return None
        root, data = self.target.root, self.target.data.resolve()
        outside = (data,) if data.is_dir() and root not in data.parents else ()  # prepared data kept elsewhere
        readonly = (root, *outside, *sandbox.python_paths(), *(root / Path(p).expanduser() for p in box.readonly))
        hidden = (*hidden, *(root / Path(p).expanduser() for p in box.hide))
        return Jail(readonly, writable, hidden, required=box.isolate == "required")

    def held_out(self) -> tuple[Path, ...]:
        """Everything of the prepared data but train/: the training command must not read it."""
        data = self.target.data
        return tuple(sorted(p for p in data.iterdir() if p.name != "train")) if data.is_dir() else ()

    def staging(self, slot: Slot) -> Path:
        """The slot's output directory while a run is in flight, the same for every run (a warm server's sandbox
        binds it once; see forkserver.py); the files move to the run's own `out/` when it ends."""
        return self.target.state / "slots" / slot.name / "out"

    def run(self, spec: RunSpec, slot: Slot) -> RunRecord:
        config = self.target.config
        out = self.staging(slot)
        log = spec.directory / "log.txt"
        _empty(out)  # what a run cut short by a killed harness left
        spec.directory.mkdir(parents=True, exist_ok=True)
        started, started_at = time.monotonic(), time.time()

        def job(command: str, data: Path, jail: Optional[Jail], kind: str = "") -> Job:
            env = self.env(spec, slot, out, data)
            argv = expand(command_argv(command), env)
            return Job(argv, spec.worktree, env, spec.timeout, log,
                       self.target.pids / f"{slot.name}{kind}.pid", jail, config.sandbox.limits(),
                       preload=forkserver.script_imports(argv, self.target.root, spec.worktree))

        def announce(command: str) -> None:
            with open(log, "a") as handle:
                handle.write(f"==> {command}\n")

        flags: list[Flag] = []
        problem = self._tampering(spec, before=True)
        if problem:
            flags.append(Flag("scope", problem))
            return RunRecord(experiment_id=spec.experiment_id, seed=spec.seed, state=RunState.REJECTED, metric=None,
                             reason=problem, log_path=str(log), flags=tuple(flags), slot=slot.name,
                             started_at=started_at)
        evaluate = config.commands.evaluate and job(config.commands.evaluate, self.target.data, self.jail((out,)),
                                                    ".evaluate")
        if evaluate:
            self.executor.warm(evaluate, slot)  # its imports load while training runs
        try:
            cache = compile_cache(spec.split, out, scrubbed_environ())
            cache.mkdir(parents=True, exist_ok=True)  # the jail binds it writable: it must exist
            train_jail = self.jail((spec.worktree, out, *([cache] if spec.split == "val" else [])), self.held_out())
            announce(config.commands.train)
            train = job(config.commands.train, self.target.data / "train", train_jail)
            if config.run.snapshots:
                result = self._train_watched(train, slot, out, spec.directory / "snapshots")
            else:
                result = self.executor.run(train, slot)
            peak = result.peak_rss_mb
            state, reason = _judge_exit("train", result, spec)
            refused = guard.refusals(out)  # `python -m autoresearch.guard`: the run reached for held-out data
            if refused and state is not RunState.INTERRUPTED:
                state, reason = RunState.REJECTED, f"the training command tried to read held-out data: {refused[0]}"
                flags.append(Flag("guard", "; ".join(refused)[:1000]))
            evaluated_from = log.stat().st_size if log.exists() else 0
            claimed = None
            if config.commands.evaluate:
                logged = log.read_text(errors="replace") if log.exists() else ""
                claimed = reported_numbers(logged).get(config.metric.name)
                written = self._json_numbers(out).get(config.metric.name)
                if (out / config.metric.file).exists():  # only the evaluator may write the metric
                    (out / config.metric.file).unlink()
                    value = f" ({config.metric.name} {written:.6g})" if written is not None else ""
                    flags.append(Flag("metric", f"the training command wrote {config.metric.file}{value} itself; "
                                                "deleted before the evaluator ran"))
            if state is RunState.OK:
                problem = self._tampering(spec, before=False)
                if problem:
                    state, reason = RunState.REJECTED, problem
                    flags.append(Flag("tamper", problem))
            if state is RunState.OK and config.commands.evaluate:
                announce(config.commands.evaluate)
                result = self.executor.run(evaluate, slot)
                peak = max(peak or 0, result.peak_rss_mb or 0) or None
                state, reason = _judge_exit("evaluate", result, spec)
                if result.exit_code == EVALUATOR_REJECTS and not (result.timed_out or result.interrupted):
                    lines = log.read_text(errors="replace")[evaluated_from:].strip().splitlines()
                    state, reason = RunState.REJECTED, f"the evaluator rejected the model: {lines[-1] if lines else ''}"
                    flags.append(Flag("evaluator", reason))

            text = log.read_text(errors="replace") if log.exists() else ""
            if state is RunState.CRASHED and not result.limit and "Too many open files" in text[-LOG_TAIL_CHARS:]:
                reason += f" (out of open files: at most {config.sandbox.open_files} per process, [sandbox] open_files)"
            metrics = reported_numbers(text)
            metric = None
            if state is RunState.OK:
                metric, reason = self._read_metric(out, text[evaluated_from:] if config.commands.evaluate else text,
                                                   spec.split)
                metrics.update(self._json_numbers(out))
                if metric is None or not math.isfinite(metric):
                    state = RunState.CRASHED
                    reason = reason or f"{config.metric.name} is {metric}"
                    metric = None
            note = integrity.metric_claim(claimed, metric, config.metric.name)
            if note and state is not RunState.REJECTED:
                flags.append(Flag("metric", note))
            for weights in (*out.glob("*.pt"), *(spec.directory / "snapshots").glob("*.pt")):
                weights.unlink()  # weights are large and a run is cheap to repeat
            return RunRecord(experiment_id=spec.experiment_id, seed=spec.seed, state=state, metric=metric,
                             metrics=metrics, seconds=time.monotonic() - started,
                             peak_memory_mb=metrics.get("peak_memory_mb") or peak, exit_code=result.exit_code,
                             reason=reason, log_tail=text[-LOG_TAIL_CHARS:], log_path=str(log), flags=tuple(flags),
                             slot=slot.name, started_at=started_at)
        finally:
            shutil.rmtree(out / PRIVATE_COMPILE_CACHE, ignore_errors=True)
            _move_into(out, spec.directory / "out")

    def _train_watched(self, train: Job, slot: Slot, out: Path, into: Path) -> JobResult:
        """The train job, while the files `[run] snapshots` names are copied into `into` as they appear in `out`,
        timed from the moment the job started (snapshots.py)."""
        handle = self.executor.start(train, slot)
        watcher = snapshots.Watcher(out, self.target.config.run.snapshots, into)
        try:
            return handle.wait()
        except BaseException:
            handle.cancel()
            raise
        finally:
            watcher.stop()

    def _tampering(self, spec: RunSpec, before: bool) -> Optional[str]:
        """Before training: is the commit and worktree what was approved? After: did training change them?"""
        if spec.commit is None:
            return None
        if Path(spec.worktree).resolve() == self.target.root.resolve():
            worktree = self.target.git
        else:
            worktree = self.target.git.worktree(spec.worktree)
            if worktree is None:
                return f"{spec.worktree} is not a worktree of the target's repository"
        if before and self.protected is not None:
            problem = integrity.commit_violation(worktree, spec.commit, self.protected, self.target.config)
            if problem:
                return problem
        problem = integrity.worktree_violation(worktree, spec.commit)
        if problem and not before:
            return f"{problem} while training; the evaluator did not run"
        return problem

    def _read_metric(self, out: Path, text: str, split: str = "val") -> tuple[Optional[float], str]:
        """The metric, under its name; on the test split the evaluator may name it test_* (val_bpb -> test_bpb)."""
        metric = self.target.config.metric
        names = [metric.name]
        if split != "val":
            names += [metric.name.replace("val", split, 1), f"{split}_{metric.name}"]
        if metric.pattern:
            return pattern_metric(metric.pattern, text)
        numbers = reported_numbers(text) if metric.source == "stdout" else self._json_numbers(out)
        for name in names:
            if name in numbers:
                return numbers[name], ""
        if metric.source == "stdout":
            return None, f"no '{metric.name}: <number>' line in the output"
        return None, f"{metric.file} in the run's output has no number '{metric.name}'"

    def _json_numbers(self, out: Path) -> dict[str, float]:
        if self.target.config.metric.source != "json":
            return {}
        try:
            data = json.loads((out / self.target.config.metric.file).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _empty(directory: Path) -> None:
    """Make `directory` exist and hold nothing, keeping the directory itself (a sandbox may have it bound)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _move_into(staging: Path, destination: Path) -> None:
    """Everything in `staging` moved into `destination` (created), leaving `staging` empty."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in staging.iterdir():
        try:
            path.replace(destination / path.name)
        except OSError:  # another file system, or a directory there already
            shutil.move(str(path), str(destination / path.name))
    _empty(staging)


def _judge_exit(step: str, result: JobResult, spec: RunSpec) -> tuple[RunState, str]:
    if result.interrupted:
        return RunState.INTERRUPTED, f"{step} interrupted"
    if result.timed_out:
        return RunState.TIMEOUT, (f"{step} killed after {result.seconds:.1f}s: over the hard limit of "
                                  f"{spec.timeout:.0f}s for budget {spec.budget}")
    if result.limit:
        return RunState.CRASHED, f"{step} killed: {result.limit}"
    if result.exit_code != 0:
        return RunState.CRASHED, f"{step} exited with code {result.exit_code}"
    return RunState.OK, ""
