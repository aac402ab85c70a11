"""A session on a tag: opening it (the target's lock, recovery), and what one experiment is made of:
recording it, its runs, the judge's decision, keeping or discarding it; the noise statistics. The loop that drives
experiments over the slots is scheduler.py.

A tag names a line of research; its branch `autoresearch/<tag>` always points at the best commit
the ledger knows. Each `autoresearch run` is a session on a tag. The ledger is written before git is
moved, and a session starts by making git agree with the ledger, so a harness killed at any
moment (SIGKILL included) resumes with nothing lost and nothing counted twice.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional

from . import constraints, control, integrity, judge, knobs as knob_values, scope, stats, verify
from .agents import Agent, Proposal, ProposalError
from .budget import Budget
from .config import LimitsSection
from .errors import SessionError
from .costs import dollars
from .executor import Executor, Slot, kill_leftovers
from .gitrepo import Git
from .ledger import Ledger
from .records import Experiment, Flag, RunRecord, RunState, State
from .runner import Runner, RunSpec
from .slots import Slots
from .target import Target

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
    protected: Optional[dict] = None  # {path: blob} of the protected files at the tag's base commit
    lock: Optional[IO] = None  # held while the session lives; the OS releases it if the process dies
    limits: LimitsSection = LimitsSection()  # agent spend and wall-clock caps of this session
    refs: Optional[integrity.RefGuard] = None  # every ref update of the harness, so runs can be checked against it
    slots: Optional[Slots] = None  # the executor's slots with their worktrees, lent to experiments and runs

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
        try:
            lock = control.lock(target.state)
        except control.Locked as exc:
            raise SessionError(str(exc)) from None
        ledger = Ledger(target.ledger_path)
        tag = tag or ledger.latest_tag() or default_tag()
        session = cls(target, ledger, agent, agent_name, executor, tag, budget or target.config.default_budget(),
                      say, lock=lock, limits=limits or target.config.limits)
        try:
            session._ensure_tag()
            session._recover()
            session.refs = integrity.RefGuard(git)
            session.slots = Slots(git, executor, target.worktrees, session.best_commit)
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
        self.say(f"new tag {self.tag!r}: branch {self.branch} from {base[:9]}")

    def _recover(self) -> None:
        """Make the ledger and git agree after any stop, clean or not."""
        for pid in kill_leftovers(self.target.pids):
            self.say(f"killed process group {pid}: a run left behind by a harness that was killed")
        for experiment_id in self.ledger.interrupt_unfinished(self.tag, "the harness stopped while it ran"):
            experiment = self.ledger.experiment(experiment_id)
            self.say(f"#{experiment.index} was left unfinished by a stopped harness: recorded as interrupted")
            if experiment.commit:
                self.target.git.update_ref(self.experiment_ref(experiment), experiment.commit)
        expected = self.best_commit()
        actual = self.target.git.resolve(f"refs/heads/{self.branch}")
        if actual != expected:
            self.target.git.update_ref(f"refs/heads/{self.branch}", expected)
            self.say(f"branch {self.branch} moved to the ledger's best commit {expected[:9]}"
                     + (f" (it was at {actual[:9]})" if actual else ""))

    def best_commit(self) -> str:
        best = self.ledger.best(self.tag)
        return best.commit if best else self.ledger.tag(self.tag)["base_commit"]

    def experiment_ref(self, experiment: Experiment) -> str:
        return f"refs/autoresearch/{self.tag}/{experiment.index}"

    def update_ref(self, ref: str, new: str, old: Optional[str] = None) -> None:
        """Every ref the harness moves once the session is open (compare-and-swap with `old`)."""
        if self.refs is None:
            self.target.git.update_ref(ref, new, old)
        else:
            self.refs.update(ref, new, old)

    # ---------------------------------------------------------------- experiments

    def close(self) -> None:
        self.ledger.close()
        if self.lock:
            self.lock.close()

    def run_baseline(self, worktree: Git, slot: Slot) -> Experiment:
        """The tag's base commit, run and judged: its baseline (calibrating the noise)."""
        commit = self.ledger.tag(self.tag)["base_commit"]
        worktree.reset_to(commit)
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=State.RUNNING, parent=None, commit=commit,
            description="baseline", agent="harness", knobs=self.knobs_at(worktree.root), slot=slot.name)
        self.update_ref(self.experiment_ref(experiment), commit)
        runs = judge.runs_wanted(self.target.config, baseline=True)
        self.say(f"#{experiment.index} baseline {commit[:9]} ({self.budget}, {runs} run{'s' * (runs > 1)}: "
                 f"{'calibrating the noise' if self.target.config.judge.rule == 'statistical' else 'fixed seeds'})")
        decision, runs = self.judged(experiment, worktree, slot, None)
        baseline = self.finish(experiment, decision, runs, None)
        if baseline.state is State.BASELINE and judge.seed_ignored(baseline.metrics):
            from .check import seed_ignored_message

            message = seed_ignored_message(baseline.metric, len(baseline.metrics), self.target.config.metric.name)
            self.ledger.add_flag(baseline.id, Flag("seed", message))
            self.say(f"warning: {message}")
        return baseline

    def record(self, parent: Experiment, proposal: Proposal, state: State, usage=None, *, commit: Optional[str] = None,
               agent: Optional[str] = None, **fields) -> Experiment:
        """A new experiment of `proposal` on `parent`: rejected, or running at `commit` (its ref made), with what the
        proposal cost and the suggestions it took up. `fields`: reason, diff, lines_added, lines_removed, knobs,
        slot, proposed_on, origin."""
        experiment = self.ledger.add_experiment(
            tag=self.tag, session_id=self.session_id, state=state, parent=parent.commit, commit=commit,
            description=proposal.description, agent=agent or self.agent_name, **fields)
        if usage is not None and (usage.tokens or usage.requests or usage.checks):
            self.ledger.add_agent_cost(experiment.id, self.session_id, experiment.agent, usage)
        taken = proposal.meta.get("suggestions") or ()
        if taken:
            self.ledger.take_suggestions(list(taken), experiment.id)
        if commit:
            self.update_ref(self.experiment_ref(experiment), commit)
        if state is State.REJECTED:
            self._report(experiment, parent)
        return experiment

    def refreshed_best(self, worktree: Git, slot: Slot) -> Experiment:
        """The best, with more runs first where the judge needs them (judge.refresh): the parent of the next experiment."""
        return self._refreshed(worktree, slot, self.ledger.best(self.tag))

    def judged(self, experiment: Experiment, worktree: Git, slot: Slot, best: Optional[Experiment]):
        """Run seeds until the judge decides (an implausible keep confirmed or not): (decision, runs)."""
        config = self.target.config
        runs: list = []
        decision = None
        try:
            while decision is None or decision.state is None:  # the judge always decides by its last run
                # a baseline needs all its runs (the noise is calibrated on them): at once, on every free slot; its
                # first ones (one per slot, at least two) tell whether the seed matters at all (judge.seed_ignored)
                count = judge.runs_wanted(config, baseline=True) - len(runs) if best is None else 1
                if best is None and not runs:
                    count = min(count, max(2, len(self.slots)))
                runs += self.slots.map([self.job(experiment.commit, judge.seed(config, len(runs) + i),
                                                 experiment=experiment) for i in range(max(1, count))],
                                       held=(worktree, slot))
                decision = self._constrained(experiment, runs, best, self._decide(experiment, runs, best))
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
                                         margin=decision.margin, analysis=decision.analysis)
        if decision.state is State.KEPT:
            self.update_ref(f"refs/heads/{self.branch}", experiment.commit, best.commit)
        if decision.state is State.BASELINE:
            self._record_noise(finished)
        self._report(finished, best)
        return finished

    def job(self, commit: str, seed: int, **options) -> Callable[[Git, Slot], RunRecord]:
        """One run of `commit` with `seed` (run_once's options), for `slots.map` to run on whichever slot is free."""
        return lambda worktree, slot: self.run_once(worktree, slot, commit, seed, **options)

    def run_once(self, worktree: Git, slot: Slot, commit: str, seed: int, *, experiment: Optional[Experiment] = None,
                 budget: Optional[Budget] = None, split: str = "val", directory: Optional[Path] = None,
                 timeout: Optional[float] = None):
        """One run of `commit` with `seed`, checked for tampering; an experiment's run is recorded in the ledger.
        `timeout`: the hard limit, when the session's rule does not fit (a larger model's runs)."""
        if worktree.resolve("HEAD") != commit:
            worktree.reset_to(commit)
        if directory is None:
            directory = self.target.runs / self.tag / f"{experiment.index:05d}" / f"seed{seed}"
        spec = RunSpec(experiment.id if experiment else 0, worktree.root, seed, budget or self.budget,
                       timeout or self._timeout(budget), directory, split=split, commit=commit)
        refs = self.refs.snapshot() if self.refs else self.target.git.refs()
        run = dataclasses.replace(self.executor.execute(Runner(self.target, self.executor, self.protected), spec, slot),
                                  budget=str(spec.budget))  # only runs at one budget are ever compared
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
        """The noise model at the session's budget: pooled over this line's runs at that budget (one group per
        experiment), and the runs of the experiment in flight."""
        budget = str(self.budget)
        skip = current[0].experiment_id if current else None
        groups = [e.metrics_at(budget) for e in self.ledger.experiments(self.tag) if e.id != skip]
        if current:
            groups.append([r.metric for r in current if r.state is RunState.OK])
        return stats.pooled_noise(groups)

    def _best_gain(self) -> Optional[float]:
        """The largest gain kept at the session's budget (a gain at another budget is another scale)."""
        budget = str(self.budget)
        gains = [e.effect for e in self.ledger.experiments(self.tag)
                 if e.state is State.KEPT and e.effect and e.budget == budget]
        return max(gains) if gains else None

    def _record_noise(self, experiment: Experiment) -> dict:
        """The calibration of `experiment` at the session's budget (its runs at other budgets left out)."""
        runs = experiment.runs_at(str(self.budget))
        values = [run.metric for run in runs]
        steps = [r.metrics["num_steps"] for r in runs if "num_steps" in r.metrics]
        pooled = self.noise()
        low, high = stats.confidence_interval(values) if len(values) > 1 else (None, None)
        record = {"runs": len(values), "mean": statistics.fmean(values) if values else None,
                  "sd": statistics.stdev(values) if len(values) > 1 else None, "ci_low": low, "ci_high": high,
                  "steps_mean": statistics.fmean(steps) if steps else None,
                  "steps_sd": statistics.stdev(steps) if len(steps) > 1 else None,
                  "pooled_sd": pooled.sd if pooled.known else None, "pooled_df": pooled.df}
        self.ledger.add_noise(self.tag, experiment.id, str(self.budget), record)
        return record

    def _refined(self, experiment: Experiment) -> Experiment:
        """`experiment` re-read after more runs of it; its metric becomes the mean of its runs at the budget it was
        judged at (more runs there sharpen it; runs at another budget never enter it)."""
        experiment = self.ledger.experiment(experiment.id)
        values = experiment.metrics_at(experiment.budget)
        return self.ledger.refine_metric(experiment.id, statistics.fmean(values)) if values else experiment

    def calibrate(self, seeds: int) -> dict:
        """Run the best commit `seeds` more times at the session's budget (seeds it has no run of at that budget)
        and record the noise model there; the baseline first."""
        with self.slots.take() as (worktree, slot):
            best = self.ledger.best(self.tag)
            if best is None:
                best = self.run_baseline(worktree, slot)
                if best.state is not State.BASELINE:
                    raise SessionError(f"the baseline failed ({best.reason}); fix the target first")
            budget = str(self.budget)
            used = {run.seed for run in best.runs if run.budget == budget}
            new = [seed for seed in range(len(used) + seeds * 2) if seed not in used][:seeds]
            other = f" (it was judged at {best.budget}: these runs are kept apart)" if best.budget != budget else ""
            self.say(f"calibrating #{best.index} ({best.commit[:9]}) at {budget} with {len(new)} more seeds: "
                     f"{new}{other}")
            done = self.slots.map([self.job(best.commit, seed, experiment=best) for seed in new], held=(worktree, slot))
        for seed, run in zip(new, done):
            shown = f"{run.metric:.6f}" if run.metric is not None else f"{run.state.value} ({run.reason})"
            self.say(f"  seed {seed}: {self.target.config.metric.name} {shown}")
        return self._record_noise(self._refined(best))

    def _confirm(self, experiment: Experiment, worktree: Git, slot: Slot, best: Experiment, runs: list,
                 decision: "judge.Decision", suspicion: str) -> "judge.Decision":
        """An implausible keep must hold on more seeds (max_runs + 2 runs in all), then on the held-out test split,
        where the paired interval of the gain over CONFIRM_SEEDS seeds must lie above zero."""
        config = self.target.config
        where = " and on the test split" if config.commands.evaluate else " (no evaluate command: no test split)"
        self.say(f"#{experiment.index} {suspicion}: confirming on more seeds{where}")
        runs += self.slots.map([self.job(experiment.commit, judge.seed(config, position), experiment=experiment)
                                for position in range(len(runs), config.judge.max_runs + 2)], held=(worktree, slot))
        decision = self._decide(experiment, runs, best)
        outcome = decision.reason
        if decision.state is State.KEPT and config.commands.evaluate:
            test = verify.compare(self, worktree, slot, best.commit, experiment.commit,
                                  seeds=list(range(judge.CONFIRM_SEEDS)), split="test", kind="implausible")["effect"]
            confirmed, outcome = judge.confirmed_on_test(test)
            if not confirmed:
                decision = dataclasses.replace(decision, state=State.DISCARDED,
                                               reason=f"{suspicion}; not confirmed on the test split ({outcome})")
        elif decision.state is not State.KEPT:
            decision = dataclasses.replace(decision, reason=f"{suspicion}; not confirmed: {decision.reason}")
        self.ledger.add_flag(experiment.id, Flag("implausible", f"{suspicion}; "
                                                 f"{'confirmed' if decision.state is State.KEPT else 'not confirmed'}"
                                                 f" ({outcome})"))
        return decision

    def _decide(self, experiment: Experiment, runs: list, best: Optional[Experiment]) -> "judge.Decision":
        """The judge's decision on `runs` of `experiment` against `best`, at the session's budget."""
        return judge.decide(runs, best, self.target.config, self.noise(runs), budget=str(self.budget),
                            lines_added=experiment.lines_added, lines_removed=experiment.lines_removed)

    def _refreshed(self, worktree: Git, slot: Slot, best: Experiment) -> Experiment:
        """The best, with more runs at the session's budget first where the judge needs them (judge.refresh): none
        there yet (the line was measured at another budget: it is re-baselined, as a new line calibrates), the
        noise unknown, or the best far from where the noise was last calibrated (calibrated again); or a change kept
        on fewer runs than a candidate gets (topped up once: a failed run is left recorded, not tried again)."""
        config, budget = self.target.config, str(self.budget)
        history = [h for h in self.ledger.noise_history(self.tag) if h["budget"] == budget and h["mean"] is not None]
        refresh = judge.refresh(best, budget, self.noise(), history[-1]["mean"] if history else None, config)
        if refresh is None:
            return best
        self.say(f"re-calibrating on #{best.index}: {refresh.reason}" if refresh.calibration
                 else f"more runs of #{best.index} first: {refresh.reason}")
        wanted = refresh.runs
        seeds = [judge.seed(config, position) for position in range(2 * wanted)]  # what a candidate uses: they pair
        while True:
            here = [run for run in self.ledger.experiment(best.id).runs if run.budget == budget]
            succeeded = sum(run.state is RunState.OK for run in here)
            if succeeded >= wanted or (not succeeded and len(here) >= 2):  # two failures and no success: it fails there
                break
            tried = {run.seed for run in here}
            count = wanted - succeeded if here else min(wanted, max(2, len(self.slots)))  # the first: does it run?
            batch = [seed for seed in seeds if seed not in tried][:count]  # at once, on every free slot
            if not batch:
                break
            self.slots.map([self.job(best.commit, seed, experiment=best) for seed in batch], held=(worktree, slot))
            if not refresh.calibration:
                break
        best = self._refined(best)
        if not best.metrics_at(budget):
            failed = [r for r in best.runs if r.budget == budget]
            raise SessionError(f"the best, #{best.index}, has no successful run at budget {budget}"
                               + (f" ({failed[-1].state.value}: {failed[-1].reason})" if failed else "")
                               + f"; run the line at its budget ({best.budget}) or start a new --tag")
        if refresh.calibration:
            self._record_noise(best)
        return best

    def heldout_test(self, seeds: int) -> Optional[dict]:
        """The best commit against the baseline on the test split: never used to decide, only reported."""
        best, baseline = self.ledger.best(self.tag), self.ledger.baseline(self.tag)
        if not (seeds and best and baseline and best.id != baseline.id and self.target.config.commands.evaluate):
            return None
        with self.slots.take() as (worktree, slot):
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

    # ---------------------------------------------------------------- caps

    def limit_reached(self, started: float) -> Optional[str]:
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

    def write_proposal(self, worktree: Git, proposal: Proposal) -> None:
        """Write the proposal's files into the worktree (never outside it, never into .git)."""
        try:
            scope.write_inside(worktree.root, proposal.writes)
        except ValueError as exc:
            raise ProposalError(str(exc)) from None

    def knobs_at(self, root: Path) -> dict:
        """The knobs' values in the files under `root` (a worktree)."""
        knobs = self.target.config.knobs
        files = {k.file: (root / k.file).read_text(errors="replace") for k in knobs if (root / k.file).is_file()}
        return knob_values.current(knobs, files)

    def _timeout(self, budget: Optional[Budget] = None) -> float:
        return run_timeout(budget or self.budget, self.target.config.budget.timeout, self.ledger.baseline(self.tag))

    def _report(self, experiment: Experiment, best: Optional[Experiment]) -> None:
        name = self.target.config.metric.name
        figure = f"{name} {experiment.metric:.6f}" if experiment.metric is not None else f"{name} -"
        if experiment.metric is not None and best is not None and best.metric is not None:
            figure += f" ({experiment.metric - best.metric:+.6f})"
        detail = "" if experiment.state in (State.KEPT, State.BASELINE, State.DISCARDED) else f"  [{experiment.reason}]"
        seconds = f"  {experiment.seconds:.1f}s" if experiment.seconds else ""
        self.say(f"#{experiment.index:<4} {experiment.state.value:<11} {figure}  {experiment.description}{detail}{seconds}")


def run_timeout(budget: Budget, configured: Optional[float], baseline: Optional[Experiment]) -> float:
    """A run's hard wall-clock limit at `budget`: [budget] timeout when set; for a seconds budget twice the budget
    plus a minute; for steps or tokens three times the baseline's slowest run, scaled from its budget to this one
    (a line resumed, verified or calibrated at ten times its steps takes about ten times as long), plus a minute;
    an hour before the line has a baseline."""
    if configured:
        return configured
    if budget.kind == "seconds":
        return 2 * budget.value + 60
    runs = baseline.runs if baseline else ()
    scaled = [run.seconds * budget.value / ran.value for run in runs
              if run.seconds and run.budget and (ran := Budget.parse(run.budget)).kind == budget.kind]
    if scaled:
        return 3 * max(scaled) + 60
    if baseline and baseline.seconds:  # runs recorded before runs had budgets
        return 3 * baseline.seconds / max(1, len(baseline.runs)) + 60
    return 3600.0
