"""The research loop: propose, apply as a commit, run, judge, keep or discard, record. Resumable.

A research line is a tag; its branch `autoresearch/<tag>` always points at the best commit the
ledger knows. Each `autoresearch run` is a session on a tag. The ledger is written before git is
moved, and a session starts by making git agree with the ledger, so a harness killed at any
moment (SIGKILL included) resumes with nothing lost and nothing counted twice.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

from . import control, judge, knobs as knob_values, scope
from .agents import Agent, AgentExhausted, Context, Proposal, ProposalError
from .budget import Budget
from .executor import Executor, Slot, kill_leftovers
from .gitrepo import Git
from .ledger import Ledger
from .records import Experiment, RunState, State
from .runner import Runner, RunSpec
from .target import Target

MAX_AGENT_FAILURES = 5  # consecutive agent errors before the session pauses instead of spinning


class SessionError(Exception):
    """The session cannot start or go on; the message says why and what to do."""


def _lock(path: Path) -> IO:
    """An exclusive lock on the target: two sessions would share worktrees and fight over the branch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SessionError(f"another autoresearch session ({holder}) is running on this target") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def default_tag() -> str:
    return time.strftime("%b%d").lower()


@dataclass
class Session:
    target: Target
    ledger: Ledger
    agent: Agent
    agent_name: str
    executor: Executor
    tag: str
    budget: Budget
    seeds: list[int]
    say: Callable[[str], None] = print
    session_id: Optional[int] = None
    lock: Optional[IO] = None  # held while the session lives; the OS releases it if the process dies

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.tag}"

    # ---------------------------------------------------------------- opening and recovery

    @classmethod
    def open(cls, target: Target, agent: Agent, agent_name: str, executor: Executor, *, tag: Optional[str] = None,
             budget: Optional[Budget] = None, say: Callable[[str], None] = print) -> "Session":
        git = target.git
        if not git.is_repo():
            raise SessionError(f"{target.root} is not a git repository (run `git init` and commit the target first)")
        if target.config.commands.prepare and not target.data.is_dir():
            raise SessionError(f"no prepared data in {target.data}: run `autoresearch prepare` first")
        git.exclude(f"/{target.state.name}/")
        lock = _lock(target.state / "session.lock")
        ledger = Ledger(target.ledger_path)
        tag = tag or ledger.latest_tag() or default_tag()
        session = cls(target, ledger, agent, agent_name, executor, tag, budget or target.config.default_budget(),
                      list(target.config.run.seeds), say, lock=lock)
        try:
            session._ensure_tag()
            session._recover()
            session.session_id = ledger.start_session(tag, agent_name, str(session.budget), sys.argv, os.getpid())
        except BaseException:
            session.close()
            raise
        return session

    def _ensure_tag(self) -> None:
        git = self.target.git
        if self.ledger.tag(self.tag):
            return
        if git.resolve(f"refs/heads/{self.branch}"):
            raise SessionError(f"branch {self.branch} exists but the ledger knows no tag {self.tag!r}; "
                               "choose another --tag")
        base = git.resolve("HEAD")
        if base is None:
            raise SessionError(f"{self.target.root} has no commit yet; commit the target first")
        watched = [p for p in git.dirty_paths() if scope.matches(p, (*self.target.config.files.editable,
                                                                     *self.target.config.files.protected))]
        if watched:
            raise SessionError(f"uncommitted changes in {', '.join(watched)}: research starts from a commit, "
                               "so commit or stash them first")
        self.ledger.create_tag(self.tag, self.branch, base)  # the ledger first: _recover makes the branch
        git.update_ref(f"refs/heads/{self.branch}", base)
        self.say(f"new research line {self.tag!r}: branch {self.branch} from {base[:9]}")

    def _recover(self) -> None:
        """Make the ledger and git agree after any stop, clean or not."""
        for pid in kill_leftovers(self.target.pids):
            self.say(f"killed process group {pid}: a run left behind by a harness that was killed")
        for experiment_id in self.ledger.interrupt_unfinished(self.tag, "the harness stopped while it ran"):
            experiment = self.ledger.experiment(experiment_id)
            self.say(f"#{experiment.index} was left unfinished by a stopped harness: recorded as interrupted")
            if experiment.commit:
                self.target.git.update_ref(self._experiment_ref(experiment), experiment.commit)
        expected = self._best_commit()
        actual = self.target.git.resolve(f"refs/heads/{self.branch}")
        if actual != expected:
            self.target.git.update_ref(f"refs/heads/{self.branch}", expected)
            self.say(f"branch {self.branch} moved to the ledger's best commit {expected[:9]}"
                     + (f" (it was at {actual[:9]})" if actual else ""))

    def _best_commit(self) -> str:
        best = self.ledger.best(self.tag)
        return best.commit if best else self.ledger.tag(self.tag)["base_commit"]

    def _experiment_ref(self, experiment: Experiment) -> str:
        return f"refs/autoresearch/{self.tag}/{experiment.index}"

    # ---------------------------------------------------------------- the loop

    def run(self, experiments: Optional[int] = None) -> str:
        """Run the baseline if needed, then `experiments` experiments (None: until stopped)."""
        slot = self.executor.slots()[0]
        worktree = self.target.git.add_worktree(self.target.worktrees / slot.name, self._best_commit())
        reason = "stopped"
        control.clear(self.target.state)  # a pause or stop left from an earlier session does not apply
        try:
            if self.ledger.best(self.tag) is None:
                baseline = self._run_baseline(worktree, slot)
                if baseline.state is not State.BASELINE:
                    reason = f"the baseline failed ({baseline.reason}); fix the target and run again"
                    raise SessionError(reason)
            done, failures = 0, 0
            while experiments is None or done < experiments:
                if control.hold(self.target.state, self.say):  # the dashboard's pause / stop, between experiments
                    reason = f"stopped on request (control file) after {done} experiments"
                    self.say(reason)
                    return reason
                experiment = self.step(worktree, slot)
                done += 1
                failures = failures + 1 if experiment.reason.startswith("agent error") else 0
                if failures >= MAX_AGENT_FAILURES:
                    reason = f"paused: the agent failed {failures} times in a row ({experiment.reason})"
                    self.say(reason)
                    return reason
            reason = f"done: {done} experiments"
            return reason
        except AgentExhausted as exc:
            reason = f"the agent has no more proposals: {exc}"
            self.say(reason)
            return reason
        except KeyboardInterrupt:
            reason = "stopped by the user"
            self.say(reason)
            return reason
        finally:
            self.ledger.end_session(self.session_id, reason)

    def close(self) -> None:
        self.ledger.close()
        if self.lock:
            self.lock.close()

    def _run_baseline(self, worktree: Git, slot: Slot) -> Experiment:
        commit = self.ledger.tag(self.tag)["base_commit"]
        worktree.reset_to(commit)
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.RUNNING, parent=None, commit=commit,
            description="baseline", agent="harness", knobs=self._knob_values(worktree.root))
        self.target.git.update_ref(self._experiment_ref(experiment), commit)
        self.say(f"#{experiment.index} baseline {commit[:9]} ({self.budget}, seeds {self.seeds})")
        return self._execute(experiment, worktree, slot, best=None)

    def step(self, worktree: Git, slot: Slot) -> Experiment:
        """One experiment: propose, check, commit, run, judge, record."""
        parent = self.ledger.best(self.tag)
        worktree.reset_to(parent.commit)
        history = tuple(self.ledger.experiments(self.tag))
        context = Context(self.target.config, self.target.program(), self._editable_files(worktree),
                          parent, self.ledger.baseline(self.tag), history)
        try:
            proposal = self.agent.propose(context)
            self._apply(worktree, proposal)
        except (AgentExhausted, KeyboardInterrupt):
            raise
        except ProposalError as exc:
            return self._reject(parent, Proposal("(malformed proposal)"), f"malformed proposal: {exc}")
        except Exception as exc:  # an agent's bug or outage is a recorded value, never the loop's end
            return self._reject(parent, Proposal("(no proposal)"), f"agent error: {type(exc).__name__}: {exc}")

        changes = worktree.stage_changes()
        diff, added, removed = worktree.staged_diff()
        problem = scope.violation(changes, worktree.root, self.target.config)
        if problem:
            return self._reject(parent, proposal, problem, diff, added, removed)
        commit = worktree.commit_all(f"{proposal.description}\n\nautoresearch {self.tag}: proposed by {self.agent_name}")
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.RUNNING, parent=parent.commit, commit=commit,
            description=proposal.description, agent=self.agent_name, diff=diff, lines_added=added,
            lines_removed=removed, knobs=self._knob_values(worktree.root))
        self.target.git.update_ref(self._experiment_ref(experiment), commit)
        return self._execute(experiment, worktree, slot, best=parent)

    def _execute(self, experiment: Experiment, worktree: Git, slot: Slot, best: Optional[Experiment]) -> Experiment:
        runner = Runner(self.target, self.executor)
        runs = []
        try:
            for seed in self.seeds:
                spec = RunSpec(experiment.id, worktree.root, seed, self.budget, self._timeout(),
                               self.target.runs / self.tag / f"{experiment.index:05d}" / f"seed{seed}")
                run = runner.run(spec, slot)
                self.ledger.add_run(run)
                runs.append(run)
                if run.state is not RunState.OK:
                    break  # a failed seed decides the experiment; more seeds would only spend compute
        except KeyboardInterrupt:
            self.ledger.set_state(experiment.id, State.INTERRUPTED, reason="stopped by the user while it ran")
            raise
        decision = judge.decide(runs, best, self.target.config)
        seconds = sum(run.seconds for run in runs)
        finished = self.ledger.set_state(experiment.id, decision.state, metric=decision.metric,
                                         reason=decision.reason, seconds=seconds)
        if decision.state is State.KEPT:
            self.target.git.update_ref(f"refs/heads/{self.branch}", experiment.commit, best.commit)
        self._report(finished, best)
        return finished

    def _reject(self, parent: Experiment, proposal: Proposal, reason: str, diff: str = "", added: int = 0,
                removed: int = 0) -> Experiment:
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.REJECTED, parent=parent.commit, commit=None,
            description=proposal.description, agent=self.agent_name, diff=diff, lines_added=added,
            lines_removed=removed, reason=reason)
        self._report(experiment, parent)
        return experiment

    # ---------------------------------------------------------------- helpers

    def _apply(self, worktree: Git, proposal: Proposal) -> None:
        root = worktree.root.resolve()
        for relative, content in proposal.writes.items():
            path = (root / relative).resolve()
            if root not in path.parents or ".git" in Path(relative).parts:
                raise ProposalError(f"{relative!r} is not a path inside the target")
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)

    def _editable_files(self, worktree: Git) -> dict[str, str]:
        tracked = worktree.run("ls-files", "-z").split("\0")
        return {path: (worktree.root / path).read_text(errors="replace") for path in tracked
                if path and scope.matches(path, self.target.config.files.editable)
                and not scope.is_protected(path, self.target.config)}

    def _knob_values(self, root: Path) -> dict:
        values = {}
        for knob in self.target.config.knobs:
            path = root / knob.file
            if path.exists():
                values.update(knob_values.read_all(path.read_text(errors="replace"), [knob.name]))
        return values

    def _timeout(self) -> float:
        if self.target.config.budget.timeout:
            return self.target.config.budget.timeout
        if self.budget.kind == "seconds":
            return 2 * self.budget.value + 60
        baseline = self.ledger.baseline(self.tag)
        if baseline and baseline.seconds:
            return 3 * baseline.seconds / max(1, len(baseline.runs)) + 60
        return 3600.0

    def _report(self, experiment: Experiment, best: Optional[Experiment]) -> None:
        name = self.target.config.metric.name
        figure = f"{name} {experiment.metric:.6f}" if experiment.metric is not None else f"{name} -"
        if experiment.metric is not None and best is not None and best.metric is not None:
            figure += f" ({experiment.metric - best.metric:+.6f})"
        detail = "" if experiment.state in (State.KEPT, State.BASELINE, State.DISCARDED) else f"  [{experiment.reason}]"
        seconds = f"  {experiment.seconds:.1f}s" if experiment.seconds else ""
        self.say(f"#{experiment.index:<4} {experiment.state.value:<11} {figure}  {experiment.description}{detail}{seconds}")
