"""A trial of edited files: the target's train command at a tiny budget, jailed, in a scratch worktree.

The LLM agents' `check` tool calls it before they finish a proposal, so that a typo or a shape error
costs seconds instead of an experiment. The files are the target's at the parent commit with the
agent's edits written over them, in `.autoresearch/worktrees/check`; the train command runs there as
a run's would (runner.Runner's scrubbed environment, jail and resource limits; the held-out data
hidden), with a budget of four optimizer steps (AUTORESEARCH_BUDGET_STEPS=4), or CHECK_TOKENS for a target
that counts tokens (the speedrun refuses any other budget), on the device asked: the CPU by default, so that a
check never takes the GPU of a run in flight. The evaluator does not run.
Nothing of it is recorded but what it cost (the proposal's `costs.Usage`); its log is kept in
`.autoresearch/check/log.txt` until the next check.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

from . import scope
from .budget import Budget
from .executor import Job, LocalExecutor, Slot
from .runner import Runner, RunSpec, reported_numbers
from .sandbox import SandboxError
from .target import Target, command_argv

CHECK_BUDGET = Budget("steps", 4)
CHECK_TOKENS = Budget("tokens", 8192)  # 4 steps of the built-in target's CPU preset (16 sequences of 128 tokens)
CHECK_TIMEOUT = 120.0  # seconds: a check takes 5-30 s on a CPU; past this it is killed and reported as such
_DEVICE = re.compile(r"^device:\s*([A-Za-z]+(?::\d+)?)\s*$", re.M)


@dataclass(frozen=True)
class Trial:
    """What a trial run did: ok (the command exited 0) or why not, its wall time, and what it printed."""

    ok: bool
    seconds: float
    reason: str = ""  # why it failed; "" when ok
    figures: dict = field(default_factory=dict)  # every `key: number` line it printed, and "device" when it said
    log_tail: str = ""
    budget: str = str(CHECK_BUDGET)
    device: str = "cpu"


def check_budget(target: Target) -> Budget:
    """A check's budget, in the unit the target's budget is in where that is tokens (a token-counting target may
    refuse a step budget, as the speedrun does), else CHECK_BUDGET's steps."""
    return CHECK_TOKENS if target.config.default_budget().kind == "tokens" else CHECK_BUDGET


def check(target: Target, commit: str, writes: Mapping[str, Optional[str]], device: str = "cpu",
          budget: Optional[Budget] = None, timeout: float = CHECK_TIMEOUT) -> Trial:
    """Run the train command on `commit` with `writes` (new contents; None deletes) at `budget` (check_budget's by
    default) on `device`."""
    budget = budget or check_budget(target)
    state = target.state / "check"
    state.mkdir(parents=True, exist_ok=True)
    with open(state / "lock", "a") as lock:  # one trial at a time per target (a session and a CLI command)
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        try:
            worktree = target.git.add_worktree(target.worktrees / "check", commit)
            scope.write_inside(worktree.root, writes)
        except (OSError, ValueError) as exc:
            return Trial(False, time.monotonic() - started, f"the files could not be written: {exc}",
                         budget=str(budget), device=device)
        out, log = state / "out", state / "log.txt"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        log.write_text("")
        slot = Slot("check", device, threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)
        runner = Runner(target, LocalExecutor(device="cpu"))
        spec = RunSpec(0, worktree.root, 0, budget, timeout, state)
        config = target.config
        job = Job(command_argv(config.commands.train), worktree.root,
                  runner.env(spec, slot, out, target.data / "train"), timeout, log, target.pids / "check.pid",
                  runner.jail((worktree.root, out), runner.held_out()), config.sandbox.limits())
        try:
            result = runner.executor.run(job, slot)
        except SandboxError as exc:
            return Trial(False, time.monotonic() - started, str(exc), budget=str(budget), device=device)
        finally:
            shutil.rmtree(out, ignore_errors=True)  # weights: large, and of no use to anyone
        text = log.read_text(errors="replace")
        figures: dict = reported_numbers(text)
        said = _DEVICE.findall(text)
        if said:
            figures["device"] = said[-1]
        reason = ("interrupted" if result.interrupted else
                  f"killed after {result.seconds:.0f}s, over the check's limit of {timeout:.0f}s" if result.timed_out
                  else f"killed: {result.limit}" if result.limit
                  else f"exited with code {result.exit_code}" if result.exit_code != 0 else "")
        return Trial(not reason, time.monotonic() - started, reason, figures, text[-4000:], str(budget), device)
