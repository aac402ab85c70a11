"""The loop, for any number of slots: the baseline, then experiments, one per slot, each in its own worktree, fed by
an agent; then the held-out test of the best.

    proposer thread --proposals--> queue --> slot threads, one per slot: apply on the best (rebased when the best
    moved since the proposal), check, commit, run seeds until the judge decides, record the decision

One slot without `--pipeline` is the reference loop: the agent proposes when the slot is free, on the best of that
moment, and the next proposal waits for the decision. With several slots (or `--pipeline`) the agent proposes while
they train, up to one proposal more than there are slots.

A new tag's baseline, whose calibration runs are all needed before anything is judged, and the held-out test at
the end run at once on every slot (slots.py); so do an experiment's extra runs (a re-calibration, the confirmation
of an implausible jump) on the slots that are free.

The thread that calls `run` (the main thread, the one Ctrl-C reaches) watches: it obeys the control file between
experiments (`pause` holds before the next one, `resume`, `stop` ends once the experiments in flight are recorded)
and stops every slot on Ctrl-C. The threads share the ledger (its methods are serialised) and take turns, under the
scheduler's lock, for what must not interleave: recording what became of a proposal (so that the agent's next
context holds it exactly once: in the ledger or as pending), and each decision (keep or supersede, and the branch's
compare-and-swap), so two winners never race for the branch.

- Pipelining: a proposal taken after the best moved is rebased: its change is replayed on the new best with a
  three-way merge, checked again and run with the new best as its parent (recorded, with `proposed_on`); if it does
  not apply, it is recorded rejected with the conflict, and the agent's next proposal takes the slot.
- Stacking: an experiment that wins against its parent after another experiment was kept (two winners from the
  same parent) is recorded `superseded`, and its change is re-applied on top of the new best as a new experiment
  (agent `stacking`, `origin` = its index) and judged against it: kept only if the combination still wins. A
  conflict is recorded as that experiment's rejection.
- Kill-safe: an experiment is recorded `running` before it runs and decided once, the branch moves after the
  ledger. A SIGKILLed harness leaves `running` rows and process groups that the next session interrupts and kills
  (per-slot pid files); queued proposals were never recorded and are simply proposed again; a superseded experiment
  whose re-application was never recorded is stacked when the next session starts.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

from . import briefing, control, knobs, scope, transfer
from .agents import AgentError, AgentExhausted, AgentSetupError, Context, Proposal, ProposalError
from .errors import SessionError
from .executor import Slot
from .gitrepo import Git
from .records import Experiment, State
from .session import Session

STOPPED = "stopped on request (control file)"
MAX_STACK = 3  # how many times one change is re-applied on a moving best before it is left superseded
MAX_AGENT_FAILURES = 5  # consecutive agent errors before the session pauses instead of spinning
WATCH_SECONDS = 0.1  # how often the main thread looks at the control file and the slots


def run(session: Session, experiments: Optional[int] = None, final_test: bool = True,
        pipeline: Optional[bool] = None) -> str:
    """Run the baseline if needed, then `experiments` experiments (None: until stopped, a limit is reached or the agent
    has no more), then the held-out test of the best commit (unless stopped on request). Returns why the session
    ended, which the ledger records. `pipeline` (on with several slots): propose while the slots train."""
    started = time.monotonic()
    slots = session.executor.slots()
    reason = "stopped"
    control.clear(session.target.state)  # a pause or stop left from an earlier session does not apply
    try:
        if session.ledger.best(session.tag) is None:
            with session.slots.take() as (worktree, slot):  # its calibration runs spread over every slot
                baseline = session.run_baseline(worktree, slot)
            if baseline.state is not State.BASELINE:
                reason = f"the baseline failed ({baseline.reason}); fix the target and run again"
                raise SessionError(reason)
        pipelined = bool(pipeline) or len(slots) > 1
        reason = Scheduler(session, slots, pipelined).run(experiments, started)
        session.say(reason)
        if final_test and experiments != 0 and not reason.startswith(STOPPED):
            session.heldout_test(session.target.config.judge.final_test_seeds)
            transfer.at_end(session)
        return reason
    except KeyboardInterrupt:
        reason = "stopped by the user"
        session.say(reason)
        return reason
    finally:
        session.ledger.end_session(session.session_id, reason)


@dataclass(eq=False)
class Pending:
    """A change waiting for a slot: an agent's proposal (or its failure), or a winner to re-apply on the best."""

    base: Experiment  # the best when the agent proposed (for a stacked change: the superseded winner)
    proposal: Optional[Proposal] = None
    failure: Optional[tuple] = None  # (label, reason, usage) when the agent failed
    origin: Optional[Experiment] = None  # stacking: the superseded experiment whose change is re-applied


class Scheduler:
    def __init__(self, session: Session, slots: list[Slot], pipeline: bool):
        self.session = session
        self.slots = slots
        self.pipeline = pipeline
        self.cond = threading.Condition()  # guards everything below; held to record a proposal's fate and to decide
        self.queue: deque[Pending] = deque()  # proposals waiting for a slot
        self.stacks: deque[Pending] = deque()  # winners to re-apply: before any new proposal
        self.applying: set[Pending] = set()  # taken by a slot, not yet recorded
        self.busy = 0  # slots working on an item
        self.proposing = True
        self.taken = 0  # proposals taken by slots: they count toward `experiments`
        self.made = 0
        self.stopping = False  # no new work: a stop request, a limit, Ctrl-C, an error
        self.interrupted = False  # the runs in flight were interrupted (Ctrl-C, an error)
        self.paused = False
        self.announced = False  # "paused" was said: the session holds
        self.reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.calibrating = threading.Lock()
        self.experiments: Optional[int] = None
        self.started = 0.0

    # ---------------------------------------------------------------- the main thread

    def run(self, experiments: Optional[int], started: float) -> str:
        """Experiments on every slot until `experiments` proposals have been taken (None: until stopped or a
        limit), the agent has no more, or it failed too often; the reason the session ends."""
        session = self.session
        self.experiments, self.started = experiments, started
        for origin in self._unstacked(session.ledger.experiments(session.tag)):
            session.say(f"#{origin.index} was superseded and not yet re-applied: stacking it on the best")
            self.stacks.append(Pending(origin, origin=origin))
        if self.pipeline:
            session.say(f"{len(self.slots)} slot{'s' * (len(self.slots) > 1)} "
                        f"({', '.join(self._describe(s) for s in self.slots)}), up to {self._room()} proposals ahead")
        threads = [threading.Thread(target=self._slot_main, daemon=True, name=f"autoresearch-slot{i}")
                   for i in range(len(self.slots))]
        proposer = threading.Thread(target=self._propose_main, daemon=True, name="autoresearch-proposer")
        interrupted = False
        try:
            proposer.start()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                try:
                    self._obey(control.read(session.target.state)["command"])
                    time.sleep(WATCH_SECONDS)
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True
                    self._stop("stopped by the user", interrupt=True)
        finally:
            with self.cond:  # the proposer, if it is still at work, gives up
                self.stopping = True
                self.cond.notify_all()
        if interrupted:
            raise KeyboardInterrupt
        if self.error is not None:
            raise self.error
        return self.reason or f"done: {self.taken} experiments"

    def _obey(self, command: str) -> None:
        """The control file's command, between experiments: pause holds new work (and says so once nothing runs),
        resume lets it go on, stop ends the session once the experiments in flight are recorded."""
        state = self.session.target.state
        with self.cond:
            if command == "stop" and not self.stopping:
                control.clear(state)  # honoured once: the next session starts normally
                self._stop(f"{STOPPED} after {self.taken} experiments")
            self.paused = command == "pause"
            if self.paused and not self.announced and self.busy == 0:
                self.announced = True
                self.session.say(f"paused: waiting for resume (or stop) in {control.path(state)}")
            elif not self.paused and self.announced:
                self.announced = False
                self.session.say("resumed")
            self.cond.notify_all()

    @staticmethod
    def _describe(slot: Slot) -> str:
        where = f"GPU {slot.visible_devices}" if slot.visible_devices is not None else slot.device
        return f"{slot.name}: {where}, {slot.threads} thread{'s' * (slot.threads > 1)}"

    def _room(self) -> int:
        """How many proposals may wait for a slot: none beyond the free slots, unless pipelined."""
        return len(self.slots) + 1 if self.pipeline else len(self.slots)

    def _stop(self, reason: str, interrupt: bool = False) -> None:
        """No new work; `interrupt`: stop the runs in flight too (their reason wins over an earlier one)."""
        with self.cond:
            self.reason = reason if interrupt else self.reason or reason
            self.stopping = True
            self.interrupted = self.interrupted or interrupt
            self.cond.notify_all()
        if interrupt:
            self.session.executor.interrupt()

    def _end(self, reason: str) -> None:
        """No more proposals: the session ends once the slots are done with what is queued."""
        with self.cond:
            self.reason = self.reason or reason
            self.proposing = False
            self.cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        if not self.stopping:
            self.error = self.error or exc
            self._stop(f"harness error: {type(exc).__name__}: {exc}", interrupt=True)

    # ---------------------------------------------------------------- the proposer

    def _propose_main(self) -> None:
        session = self.session
        failures = 0
        try:
            while True:
                with self.cond:
                    while not self.stopping and (self.paused or len(self.queue) + (0 if self.pipeline else self.busy)
                                                 >= self._room()):
                        self.cond.wait(0.5)
                    if self.stopping:
                        return
                    if self.experiments is not None and self.made >= self.experiments:
                        return
                reached = session.limit_reached(self.started)
                if reached:
                    self._end(f"stopped: {reached}")
                    return
                context = self._context()
                try:
                    item = Pending(context.parent, proposal=session.agent.propose(context))
                    failures = 0
                except AgentExhausted as exc:
                    self._end(f"the agent has no more proposals: {exc}")
                    return
                except AgentSetupError as exc:  # recorded, then no more proposals: the next would fail the same way
                    item = Pending(context.parent, failure=("(no proposal)", f"agent error: {exc}", exc.usage))
                    with self.cond:
                        self.queue.append(item)
                        self.made += 1
                        self.cond.notify_all()
                    self._end(f"paused: {exc}")
                    return
                except ProposalError as exc:
                    item = Pending(context.parent, failure=("(malformed proposal)", f"malformed proposal: {exc}",
                                                            getattr(exc, "usage", None)))
                    failures = 0
                except AgentError as exc:
                    item = Pending(context.parent, failure=("(no proposal)", f"agent error: {exc}", exc.usage))
                    failures += 1
                except Exception as exc:  # an agent's bug or outage is a recorded value, never the loop's end
                    item = Pending(context.parent, failure=("(no proposal)", f"agent error: {type(exc).__name__}: "
                                                                             f"{exc}", None))
                    failures += 1
                with self.cond:
                    if self.stopping:
                        return
                    self.queue.append(item)
                    self.made += 1
                    self.cond.notify_all()
                if failures >= MAX_AGENT_FAILURES:
                    self._end(f"paused: the agent failed {failures} times in a row ({item.failure[1]})")
                    return
        except BaseException as exc:
            self._fail(exc)
        finally:
            with self.cond:
                self.proposing = False
                self.cond.notify_all()

    def _context(self) -> Context:
        """What the agent knows: the best, its editable files, the history, the proposals not yet recorded, and the
        oldest suggestion that none of them considered."""
        session = self.session
        ledger, config = session.ledger, session.target.config
        with self.cond:  # the ledger and the pending proposals at one instant: each proposal in exactly one of them
            best = ledger.best(session.tag)
            history = tuple(ledger.experiments(session.tag))
            pending = tuple(item.proposal for item in (*self.queue, *self.applying) if item.proposal is not None)
            waiting = ledger.pending_suggestions(session.tag)
        considered = {id_ for proposal in pending for id_ in proposal.meta.get("suggestions") or ()}
        files = session.target.git.files_at(
            best.commit, lambda path: scope.matches(path, config.files.editable) and not scope.is_protected(path, config))
        return briefing.context(session, best, files, pending, history=history,
                                suggestions=tuple(s for s in waiting if s.id not in considered)[:1])

    # ---------------------------------------------------------------- the slots

    def _next(self) -> Optional[Pending]:
        with self.cond:
            while True:
                if self.stopping:
                    return None
                if not self.paused and (self.stacks or (self.queue and (self.experiments is None
                                                                        or self.taken < self.experiments))):
                    item = self.stacks.popleft() if self.stacks else self.queue.popleft()
                    if item.origin is None:
                        self.taken += 1
                    self.applying.add(item)
                    self.busy += 1
                    self.cond.notify_all()
                    return item
                done = self.experiments is not None and self.taken >= self.experiments
                if (done or not self.proposing) and not self.stacks and self.busy == 0 \
                        and (done or not self.queue):
                    return None
                self.cond.wait(0.5)

    def _slot_main(self) -> None:
        """One experiment after another, each on a slot of the session's (one lent to runs elsewhere comes back
        when they are done)."""
        try:
            while (item := self._next()) is not None:
                try:
                    with self.session.slots.take() as (worktree, slot):
                        self._work(item, slot, worktree)
                finally:
                    with self.cond:
                        self.applying.discard(item)
                        self.busy -= 1
                        self.cond.notify_all()
        except BaseException as exc:
            self._fail(exc)

    def _work(self, item: Pending, slot: Slot, worktree: Git) -> None:
        session = self.session
        if item.failure is not None:
            label, reason, usage = item.failure
            self._settle(item, lambda: session.record(item.base, Proposal(label), State.REJECTED, usage, reason=reason))
            return
        with self.calibrating:  # the best gets more runs first where the judge needs them; one slot does it
            parent = session.refreshed_best(worktree, slot)
        experiment = self._begin(item, parent, slot, worktree)
        if experiment is None:
            return
        try:
            decision, runs = session.judged(experiment, worktree, slot, parent)
        except BaseException:
            session.ledger.set_state(experiment.id, State.INTERRUPTED, reason="the harness failed while it ran")
            raise
        self._decide(experiment, decision, runs, parent)

    def _settle(self, item: Pending, record: Callable[[], Experiment]) -> Experiment:
        """Record what became of a taken item and forget it as pending, in one step (see _context)."""
        with self.cond:
            try:
                return record()
            finally:
                self.applying.discard(item)

    def _begin(self, item: Pending, parent: Experiment, slot: Slot, worktree: Git) -> Optional[Experiment]:
        """Apply the item on `parent` (rebasing it when it was made on another best), check it, commit it and
        record it running; None when it was recorded rejected instead."""
        session = self.session
        origin = item.origin
        proposal = item.proposal or Proposal(f"stack #{origin.index} on #{parent.index}: {origin.description}")
        usage = proposal.meta.get("usage")
        agent = "stacking" if origin else proposal.meta.get("agent") or session.agent_name
        based_on = origin.parent if origin else item.base.commit
        where = {"agent": agent, "slot": slot.name, "proposed_on": based_on if based_on != parent.commit else None,
                 "origin": origin.index if origin else None}

        def reject(reason: str, diff: str = "", added: int = 0, removed: int = 0) -> None:
            self._settle(item, lambda: session.record(parent, proposal, State.REJECTED, usage, reason=reason, diff=diff,
                                                      lines_added=added, lines_removed=removed, **where))

        try:
            conflict = self._apply(item, parent, worktree)
        except ProposalError as exc:
            reject(f"malformed proposal: {exc}")
            return None
        if conflict:
            at = f"#{parent.index} ({parent.commit[:9]})"
            reject(f"stacking #{origin.index} on {at}: {conflict}" if origin else
                   f"proposed on #{item.base.index} ({based_on[:9]}); the best moved to {at}, where the change "
                   f"does not apply: {conflict}")
            return None
        changes = worktree.stage_changes()
        diff, added, removed = worktree.staged_diff()
        problem = scope.violation(changes, worktree.root, session.target.config,
                                  before=lambda path: worktree.run("show", f"HEAD:{path}", check=False))
        if problem:
            reject(problem, diff, added, removed)
            return None
        note = f"\nrebased from {based_on} onto {parent.commit}" if where["proposed_on"] else ""
        commit = worktree.commit_all(f"{proposal.description}\n\nautoresearch {session.tag}: proposed by {agent}{note}")
        experiment = self._settle(item, lambda: session.record(
            parent, proposal, State.RUNNING, usage, commit=commit, diff=diff, lines_added=added, lines_removed=removed,
            knobs=session.knobs_at(worktree.root), **where))
        if where["proposed_on"] and not origin:
            session.say(f"#{experiment.index} was proposed on #{item.base.index}; rebased onto the best #{parent.index}")
        return experiment

    def _apply(self, item: Pending, parent: Experiment, worktree: Git) -> Optional[str]:
        """Put the item's change in the worktree on top of `parent`, staged or not; what conflicted, or None."""
        if item.origin is not None:
            base, change = item.origin.parent, item.origin.commit
        else:
            base, change = item.base.commit, None
            worktree.reset_to(base)
            self.session.write_proposal(worktree, item.proposal)
            if base == parent.commit:
                return None
            worktree.run("add", "-A")
        patch, bare = worktree.patch(base, change), worktree.patch(base, change, context=0)
        worktree.reset_to(parent.commit)
        if not patch.strip():
            return None  # an empty change: the scope check rejects it
        conflict = worktree.apply_patch(patch)
        if conflict:  # git's merge sees changes to adjacent lines as a conflict (two constants, one under the other):
            worktree.reset_to(parent.commit)  # replay it where the lines it replaces still are, if they all are
            if worktree.apply_patch(bare, zero_context=True) is None:
                return None
            worktree.reset_to(parent.commit)
            values = item.proposal.meta.get("knobs") if item.proposal else None
            if isinstance(values, dict) and values and self._set_knobs(worktree, values):
                return None  # a point of the knob search: the same point, set on the new best
        return conflict

    def _set_knobs(self, worktree: Git, values: dict) -> bool:
        """Set the knobs to `values` in the worktree's files (the search's proposals are points, not edits)."""
        config = self.session.target.config
        declared = {knob.name: knob for knob in config.knobs}
        if not set(values) <= set(declared):
            return False
        for name, value in values.items():
            path = worktree.root / declared[name].file
            try:
                path.write_text(knobs.put(declared[name], path.read_text(), value))
            except (OSError, SyntaxError, knobs.KnobError):
                worktree.reset_to(worktree.head())
                return False
        return True

    # ---------------------------------------------------------------- decisions

    def _decide(self, experiment: Experiment, decision, runs: list, parent: Experiment) -> Experiment:
        """Record the judge's decision, one at a time: a winner whose parent is no longer the best is superseded
        and its change stacked on the best."""
        session = self.session
        with self.cond:
            if self.interrupted and decision.state is State.INTERRUPTED:
                why = "stopped by the user" if self.reason == "stopped by the user" else f"stopped ({self.reason})"
                decision = dataclasses.replace(decision, reason=f"{why} while it ran")
            best = session.ledger.best(session.tag)
            if decision.state is not State.KEPT or best.commit == parent.commit:
                return session.finish(experiment, decision, runs, parent)
            stack = self._depth(experiment) < MAX_STACK
            why = (f"{decision.reason}; but #{best.index} was kept while it ran: " +
                   ("its change is re-applied on the best (stacked)" if stack else
                    f"not re-applied again (a change is stacked at most {MAX_STACK} times)"))
            finished = session.finish(experiment, dataclasses.replace(decision, state=State.SUPERSEDED, reason=why),
                                      runs, parent)
            if stack:
                self.stacks.append(Pending(finished, origin=finished))
                self.cond.notify_all()
            return finished

    def _depth(self, experiment: Experiment) -> int:
        """How many times the change of `experiment` has been re-applied already (0: an agent's proposal)."""
        by_index = None
        depth = 0
        while experiment.origin is not None:
            if by_index is None:
                by_index = {e.index: e for e in self.session.ledger.experiments(self.session.tag)}
            experiment = by_index[experiment.origin]
            depth += 1
        return depth

    def _unstacked(self, experiments: list[Experiment]) -> list[Experiment]:
        """Superseded experiments whose re-application was never recorded (the harness stopped in between)."""
        stacked = {e.origin for e in experiments if e.origin is not None}
        by_index = {e.index: e for e in experiments}

        def depth(e: Experiment) -> int:
            return 0 if e.origin is None or e.origin not in by_index else 1 + depth(by_index[e.origin])

        return [e for e in experiments if e.state is State.SUPERSEDED and e.index not in stacked
                and depth(e) < MAX_STACK]
