"""The research loop: propose, apply as a commit, run, judge, keep or discard, record. Resumable.

A research line is a tag; its branch `autoresearch/<tag>` always points at the best commit the
ledger knows. Each `autoresearch run` is a session on a tag. The ledger is written before git is
moved, and a session starts by making git agree with the ledger, so a harness killed at any
moment (SIGKILL included) resumes with nothing lost and nothing counted twice.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

from . import briefing, constraints, control, integrity, judge, knobs as knob_values, scope, stats, verify
from .agents import Agent, AgentError, AgentExhausted, AgentSetupError, Proposal, ProposalError
from .budget import Budget
from .config import LimitsSection
from .costs import dollars
from .executor import Executor, Slot, kill_leftovers
from .gitrepo import Git
from .ledger import Ledger
from .records import Experiment, Flag, RunState, State
from .runner import Runner, RunSpec
from .target import Target

STOPPED = "stopped on request (control file)"
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
    say: Callable[[str], None] = print
    session_id: Optional[int] = None
    protected: Optional[dict] = None  # {path: blob} of the protected files at the research line's base
    lock: Optional[IO] = None  # held while the session lives; the OS releases it if the process dies
    limits: LimitsSection = LimitsSection()  # agent spend and wall-clock caps of this session
    refs: Optional[integrity.RefGuard] = None  # every ref update of the harness, so runs can be checked against it

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.tag}"

    # ---------------------------------------------------------------- opening and recovery

    @classmethod
    def open(cls, target: Target, agent: Agent, agent_name: str, executor: Executor, *, tag: Optional[str] = None,
             budget: Optional[Budget] = None, say: Callable[[str], None] = print,
             limits: Optional[LimitsSection] = None) -> "Session":
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
                      say, lock=lock, limits=limits or target.config.limits)
        try:
            session._ensure_tag()
            session._recover()
            session.refs = integrity.RefGuard(git)
            session.protected = integrity.protected_blobs(git, ledger.tag(tag)["base_commit"], target.config)
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

    def update_ref(self, ref: str, new: str, old: Optional[str] = None) -> None:
        """Every ref the harness moves once the session is open (compare-and-swap with `old`)."""
        if self.refs is None:
            self.target.git.update_ref(ref, new, old)
        else:
            self.refs.update(ref, new, old)

    # ---------------------------------------------------------------- the loop

    def run(self, experiments: Optional[int] = None, final_test: bool = True, pipeline: Optional[bool] = None) -> str:
        """Run the baseline if needed, then `experiments` experiments (None: until stopped or a limit is
        reached), then the held-out test of the best commit (unless stopped by the user).

        With several slots (or `pipeline`), experiments run concurrently, one per slot, and the agent proposes
        while they train (scheduler.py); with one slot, one experiment after the other."""
        started = time.monotonic()
        slots = self.executor.slots()
        slot = slots[0]
        worktree = self.target.git.add_worktree(self.target.worktrees / slot.name, self._best_commit())
        reason = "stopped"
        control.clear(self.target.state)  # a pause or stop left from an earlier session does not apply
        try:
            if self.ledger.best(self.tag) is None:
                baseline = self._run_baseline(worktree, slot)
                if baseline.state is not State.BASELINE:
                    reason = f"the baseline failed ({baseline.reason}); fix the target and run again"
                    raise SessionError(reason)
            if len(slots) > 1 or pipeline:
                from .scheduler import Scheduler

                reason = Scheduler(self, slots).run(experiments, started)
            else:
                reason = self._loop(worktree, slot, experiments, started)
            self.say(reason)
            if final_test and experiments != 0 and not reason.startswith(STOPPED):
                self.heldout_test(self.target.config.judge.final_test_seeds)
            return reason
        except KeyboardInterrupt:
            reason = "stopped by the user"
            self.say(reason)
            return reason
        finally:
            self.ledger.end_session(self.session_id, reason)

    def _loop(self, worktree: Git, slot: Slot, experiments: Optional[int], started: float) -> str:
        done, failures = 0, 0
        try:
            while experiments is None or done < experiments:
                reached = self._limit_reached(started)
                if reached:
                    return f"stopped: {reached}"
                if control.hold(self.target.state, self.say):  # the dashboard's pause / stop, between experiments
                    return f"{STOPPED} after {done} experiments"
                experiment = self.step(worktree, slot)
                done += 1
                failures = failures + 1 if experiment.reason.startswith("agent error") else 0
                if failures >= MAX_AGENT_FAILURES:
                    return f"paused: the agent failed {failures} times in a row ({experiment.reason})"
        except AgentExhausted as exc:
            return f"the agent has no more proposals: {exc}"
        except AgentSetupError as exc:  # the same answer every time: the user changes the server or the settings
            return f"paused: {exc}"
        return f"done: {done} experiments"

    def close(self) -> None:
        self.ledger.close()
        if self.lock:
            self.lock.close()

    def _run_baseline(self, worktree: Git, slot: Slot) -> Experiment:
        commit = self.ledger.tag(self.tag)["base_commit"]
        worktree.reset_to(commit)
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.RUNNING, parent=None, commit=commit,
            description="baseline", agent="harness", knobs=self._knob_values(worktree.root), slot=slot.name)
        self.update_ref(self._experiment_ref(experiment), commit)
        runs = judge.runs_wanted(self.target.config, baseline=True)
        self.say(f"#{experiment.index} baseline {commit[:9]} ({self.budget}, {runs} run{'s' * (runs > 1)}: "
                 f"{'calibrating the noise' if self.target.config.judge.rule == 'statistical' else 'fixed seeds'})")
        return self._execute(experiment, worktree, slot, best=None)

    def step(self, worktree: Git, slot: Slot) -> Experiment:
        """One experiment: propose, check, commit, run, judge, record."""
        parent = self._recalibrated(worktree, slot, self.ledger.best(self.tag))
        worktree.reset_to(parent.commit)
        context = briefing.context(self, parent, self._editable_files(worktree))
        usage = None  # what the proposal cost (LLM agents), recorded with the experiment whatever happens
        try:
            proposal = self.agent.propose(context)
            usage = proposal.meta.get("usage")
            self._apply(worktree, proposal)
        except (AgentExhausted, KeyboardInterrupt):
            raise
        except AgentSetupError as exc:  # recorded, then the session ends: the next proposal would fail the same way
            self._spent(self._reject(parent, Proposal("(no proposal)"), f"agent error: {exc}"), exc.usage)
            raise
        except ProposalError as exc:
            return self._spent(self._reject(parent, Proposal("(malformed proposal)"), f"malformed proposal: {exc}"),
                               getattr(exc, "usage", None) or usage)
        except AgentError as exc:
            return self._spent(self._reject(parent, Proposal("(no proposal)"), f"agent error: {exc}"), exc.usage)
        except Exception as exc:  # an agent's bug or outage is a recorded value, never the loop's end
            return self._spent(self._reject(parent, Proposal("(no proposal)"),
                                            f"agent error: {type(exc).__name__}: {exc}"), usage)
        proposer = proposal.meta.get("agent") or self.agent_name  # a hybrid says which of its agents proposed

        changes = worktree.stage_changes()
        diff, added, removed = worktree.staged_diff()
        problem = scope.violation(changes, worktree.root, self.target.config,
                                  before=lambda path: worktree.run("show", f"HEAD:{path}", check=False))
        if problem:
            return self._took(proposal, self._spent(self._reject(parent, proposal, problem, diff, added, removed,
                                                                 agent=proposer), usage))
        commit = worktree.commit_all(f"{proposal.description}\n\nautoresearch {self.tag}: proposed by {proposer}")
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.RUNNING, parent=parent.commit, commit=commit,
            description=proposal.description, agent=proposer, diff=diff, lines_added=added,
            lines_removed=removed, knobs=self._knob_values(worktree.root), slot=slot.name)
        self._took(proposal, self._spent(experiment, usage))
        self.update_ref(self._experiment_ref(experiment), commit)
        return self._execute(experiment, worktree, slot, best=parent)

    def _execute(self, experiment: Experiment, worktree: Git, slot: Slot, best: Optional[Experiment]) -> Experiment:
        """Run seeds until the judge decides, then record the decision and move the branch on a keep."""
        decision, runs = self.judged(experiment, worktree, slot, best)
        return self.finish(experiment, decision, runs, best)

    def judged(self, experiment: Experiment, worktree: Git, slot: Slot, best: Optional[Experiment]):
        """Run seeds until the judge decides (an implausible keep confirmed or not): (decision, runs)."""
        config = self.target.config
        runs: list = []
        decision = None
        try:
            while decision is None or decision.state is None:  # the judge always decides by its last run
                run = self.run_once(worktree, slot, experiment.commit, judge.seed(config, len(runs)),
                                    experiment=experiment)
                runs.append(run)
                decision = self._constrained(experiment, runs, best, judge.decide(
                    runs, best, config, self.noise(runs), experiment.lines_added, experiment.lines_removed))
                if decision.state is None:
                    self.say(f"#{experiment.index} run {len(runs)}: {decision.reason}")
            suspicion = judge.implausible(decision, self.noise(runs), self._best_gain(), config)
            if suspicion:
                decision = self._constrained(experiment, runs, best,
                                             self._confirm(experiment, worktree, slot, best, runs, decision, suspicion))
        except KeyboardInterrupt:
            self.ledger.set_state(experiment.id, State.INTERRUPTED, reason="stopped by the user while it ran")
            raise
        return decision, runs

    def finish(self, experiment: Experiment, decision: "judge.Decision", runs: list,
               best: Optional[Experiment]) -> Experiment:
        """Record the decision; a keep moves the branch from `best` (compare-and-swap)."""
        seconds = sum(run.seconds for run in runs)
        finished = self.ledger.set_state(experiment.id, decision.state, metric=decision.metric, reason=decision.reason,
                                         seconds=seconds, effect=decision.effect, effect_se=decision.se,
                                         margin=decision.margin)
        if decision.state is State.KEPT:
            self.update_ref(f"refs/heads/{self.branch}", experiment.commit, best.commit)
        if decision.state is State.BASELINE:
            self._record_noise(finished)
        self._report(finished, best)
        return finished

    def run_once(self, worktree: Git, slot: Slot, commit: str, seed: int, *, experiment: Optional[Experiment] = None,
                 budget: Optional[Budget] = None, split: str = "val", directory: Optional[Path] = None):
        """One run of `commit` with `seed`, checked for tampering; an experiment's run is recorded in the ledger."""
        if worktree.resolve("HEAD") != commit:
            worktree.reset_to(commit)
        if directory is None:
            directory = self.target.runs / self.tag / f"{experiment.index:05d}" / f"seed{seed}"
        spec = RunSpec(experiment.id if experiment else 0, worktree.root, seed, budget or self.budget,
                       self._timeout(budget), directory, split=split, commit=commit)
        refs = self.refs.snapshot() if self.refs else self.target.git.refs()
        run = self.executor.execute(Runner(self.target, self.executor, self.protected), spec, slot)
        moved = self.refs.restore(refs) if self.refs else integrity.restore_refs(self.target.git, refs)
        if moved:
            problem = f"the run changed git refs: {'; '.join(moved)} (put back)"
            run = dataclasses.replace(run, state=RunState.REJECTED, metric=None, reason=problem,
                                      flags=(*run.flags, Flag("git", problem)))
        if experiment is not None:
            self.ledger.add_run(run)
            for flag in run.flags:
                self.say(f"#{experiment.index} seed {seed} flagged ({flag.kind}): {flag.message}")
        elif run.flags:
            self.say(f"flagged: {'; '.join(f.message for f in run.flags)}")
        return run

    # ---------------------------------------------------------------- statistics

    def noise(self, current: Optional[list] = None) -> stats.Noise:
        """The noise model: pooled over this line's experiments run under the session's budget, and the runs
        of the experiment in flight."""
        budget = str(self.budget)
        same = {s["id"] for s in self.ledger.sessions(self.tag) if s["budget"] == budget}
        groups = [e.metrics for e in self.ledger.experiments(self.tag) if e.session_id in same
                  and not (current and e.id == current[0].experiment_id)]
        if current:
            groups.append([r.metric for r in current if r.state is RunState.OK])
        return stats.pooled_noise(groups)

    def _best_gain(self) -> Optional[float]:
        gains = [e.effect for e in self.ledger.experiments(self.tag) if e.state is State.KEPT and e.effect]
        return max(gains) if gains else None

    def _record_noise(self, experiment: Experiment) -> dict:
        values = experiment.metrics
        steps = [r.metrics["num_steps"] for r in experiment.runs if r.state is RunState.OK
                 and "num_steps" in r.metrics]
        pooled = self.noise()
        low, high = stats.confidence_interval(values) if len(values) > 1 else (None, None)
        record = {"runs": len(values), "mean": statistics.fmean(values) if values else None,
                  "sd": statistics.stdev(values) if len(values) > 1 else None, "ci_low": low, "ci_high": high,
                  "steps_mean": statistics.fmean(steps) if steps else None,
                  "steps_sd": statistics.stdev(steps) if len(steps) > 1 else None,
                  "pooled_sd": pooled.sd if pooled.known else None, "pooled_df": pooled.df}
        self.ledger.add_noise(self.tag, experiment.id, str(self.budget), record)
        return record

    def calibrate(self, seeds: int) -> dict:
        """Run the best commit `seeds` more times (new seeds) and record the noise model; the baseline first."""
        slot = self.executor.slots()[0]
        worktree = self.target.git.add_worktree(self.target.worktrees / slot.name, self._best_commit())
        best = self.ledger.best(self.tag)
        if best is None:
            best = self._run_baseline(worktree, slot)
            if best.state is not State.BASELINE:
                raise SessionError(f"the baseline failed ({best.reason}); fix the target first")
        used = {run.seed for run in best.runs}
        new = [seed for seed in range(len(used) + seeds * 2) if seed not in used][:seeds]
        self.say(f"calibrating #{best.index} ({best.commit[:9]}) with {len(new)} more seeds: {new}")
        for seed in new:
            run = self.run_once(worktree, slot, best.commit, seed, experiment=best)
            shown = f"{run.metric:.6f}" if run.metric is not None else f"{run.state.value} ({run.reason})"
            self.say(f"  seed {seed}: {self.target.config.metric.name} {shown}")
        best = self.ledger.experiment(best.id)
        if best.metrics:
            best = self.ledger.refine_metric(best.id, statistics.fmean(best.metrics))
        return self._record_noise(best)

    def _confirm(self, experiment: Experiment, worktree: Git, slot: Slot, best: Experiment, runs: list,
                 decision: "judge.Decision", suspicion: str) -> "judge.Decision":
        """An implausible keep must hold on two more seeds and on the held-out test split."""
        config = self.target.config
        self.say(f"#{experiment.index} {suspicion}: confirming on more seeds and on the test split")
        while len(runs) < config.judge.max_runs + 2:
            runs.append(self.run_once(worktree, slot, experiment.commit, judge.seed(config, len(runs)),
                                      experiment=experiment))
        decision = judge.decide(runs, best, config, self.noise(runs), experiment.lines_added, experiment.lines_removed)
        outcome = decision.reason
        if decision.state is State.KEPT and config.commands.evaluate:
            test = verify.compare(self, worktree, slot, best.commit, experiment.commit, seeds=[0, 1], split="test",
                                  kind="implausible")["effect"]
            if test["effect"] is None or test["effect"] <= 0:
                shown = f"{test['effect']:+.4g}" if test["effect"] is not None else "none"
                decision = judge.Decision(State.DISCARDED, decision.metric,
                                          f"{suspicion}; not confirmed on the test split (effect {shown})",
                                          decision.effect, decision.se, decision.margin)
            outcome = f"test split effect {test['effect']:+.4g}" if test["effect"] is not None else test["verdict"]
        elif decision.state is not State.KEPT:
            decision = dataclasses.replace(decision, reason=f"{suspicion}; not confirmed: {decision.reason}")
        self.ledger.add_flag(experiment.id, Flag("implausible", f"{suspicion}; "
                                                 f"{'confirmed' if decision.state is State.KEPT else 'not confirmed'}"
                                                 f" ({outcome})"))
        return decision

    def _recalibrated(self, worktree: Git, slot: Slot, best: Experiment) -> Experiment:
        """The best, with more runs first when the noise is unknown or was measured far from where the best is now."""
        config = self.target.config
        if config.judge.rule != "statistical" or len(best.metrics) >= config.judge.calibrate_seeds:
            return best
        noise = self.noise()
        history = [h for h in self.ledger.noise_history(self.tag) if h["budget"] == str(self.budget)]
        moved = (noise.known and not noise.deterministic and history and history[-1]["mean"] is not None
                 and abs(best.metric - history[-1]["mean"]) > config.judge.recalibrate_after * noise.sd)
        if noise.known and not moved:
            return best
        why = "the noise is unknown" if not noise.known else (
            f"the best moved {abs(best.metric - history[-1]['mean']) / noise.sd:.0f} noise sds since the last calibration")
        self.say(f"re-calibrating on #{best.index}: {why}")
        for seed in [s for s in range(config.judge.calibrate_seeds * 2) if s not in {r.seed for r in best.runs}]:
            if len(self.ledger.experiment(best.id).metrics) >= config.judge.calibrate_seeds:
                break
            self.run_once(worktree, slot, best.commit, seed, experiment=best)
        best = self.ledger.experiment(best.id)
        if best.metrics:
            best = self.ledger.refine_metric(best.id, statistics.fmean(best.metrics))
        self._record_noise(best)
        return best

    def heldout_test(self, seeds: int) -> Optional[dict]:
        """The best commit against the baseline on the test split: never used to decide, only reported."""
        best, baseline = self.ledger.best(self.tag), self.ledger.baseline(self.tag)
        if not (seeds and best and baseline and best.id != baseline.id and self.target.config.commands.evaluate):
            return None
        slot = self.executor.slots()[0]
        worktree = self.target.git.add_worktree(self.target.worktrees / slot.name, best.commit)
        return verify.compare(self, worktree, slot, baseline.commit, best.commit, seeds=list(range(seeds)),
                              split="test", kind="heldout")

    def _constrained(self, experiment: Experiment, runs: list, best: Optional[Experiment],
                     decision: "judge.Decision") -> "judge.Decision":
        """A change whose runs break a [[constraints]] bound is discarded, whatever its metric, with the bound as
        the reason (and a flag)."""
        if best is None or decision.state not in (None, State.KEPT, State.DISCARDED):
            return decision
        broken = constraints.broken(self.target.config.constraints, runs, self.ledger.baseline(self.tag))
        if broken is None:
            return decision
        self.ledger.add_flag(experiment.id, Flag("constraint", broken))
        return dataclasses.replace(decision, state=State.DISCARDED, reason=broken)

    def _took(self, proposal: Proposal, experiment: Experiment) -> Experiment:
        """Record which queued suggestions the proposal behind `experiment` considered (the agent says so)."""
        taken = proposal.meta.get("suggestions") or ()
        if taken:
            self.ledger.take_suggestions(list(taken), experiment.id)
        return experiment

    def _reject(self, parent: Experiment, proposal: Proposal, reason: str, diff: str = "", added: int = 0,
                removed: int = 0, agent: Optional[str] = None, **where) -> Experiment:
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.REJECTED, parent=parent.commit, commit=None,
            description=proposal.description, agent=agent or self.agent_name, diff=diff, lines_added=added,
            lines_removed=removed, reason=reason, **where)  # where: slot, proposed_on, origin
        self._report(experiment, parent)
        return experiment

    # ---------------------------------------------------------------- agent spend and caps

    def _spent(self, experiment: Experiment, usage) -> Experiment:
        """Record what the proposal behind `experiment` cost (nothing for agents that do not pay)."""
        if usage is not None and (usage.tokens or usage.requests or usage.checks):
            self.ledger.add_agent_cost(experiment.id, self.session_id, experiment.agent, usage)
        return experiment

    def _limit_reached(self, started: float) -> Optional[str]:
        """Which cap of this session is reached, if any (checked before each proposal)."""
        limits = self.limits
        if limits.max_hours is not None and time.monotonic() - started >= limits.max_hours * 3600:
            return f"--max-hours {limits.max_hours:g} reached"
        if limits.max_cost is None and limits.max_tokens is None:
            return None
        spent = self.ledger.session_spend(self.session_id)
        if limits.max_tokens is not None and spent.tokens >= limits.max_tokens:
            return f"--max-tokens {limits.max_tokens} reached: the agent used {spent.tokens:,} tokens in this session"
        if limits.max_cost is not None:
            if spent.cost_usd is None:
                return (f"--max-cost cannot be enforced: the price of {spent.model or 'the model'} is unknown "
                        "(add it under [agent.prices] in autoresearch.toml, or cap with --max-tokens)")
            if spent.cost_usd >= limits.max_cost:
                return f"--max-cost {dollars(limits.max_cost)} reached: the agent spent {dollars(spent.cost_usd)} in this session"
        return None

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

    def _timeout(self, budget: Optional[Budget] = None) -> float:
        budget = budget or self.budget
        if self.target.config.budget.timeout:
            return self.target.config.budget.timeout
        if budget.kind == "seconds":
            return 2 * budget.value + 60
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
