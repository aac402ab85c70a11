"""Many experiments at once: one per slot, each in its own worktree, fed by an agent that proposes while they train.

    proposer thread --proposals--> queue (at most slots + 1) --> slot threads, one per slot: apply on the best
    (rebased when the best moved since the proposal), check, commit, run seeds until the judge decides
                                                                     --> coordinator: record the decision

The coordinator is the thread that calls `run` (the main thread, the one Ctrl-C reaches). It carries out every
ledger call of the other threads (LedgerProxy: SQLite has one writer) and every decision, one at a time, so two
winners never race for the branch. The slot threads mostly wait on training processes, where the work is.

- Pipelining: the agent proposes against the best of its time while the slots train. A proposal taken after the
  best moved is rebased: its change is replayed on the new best with a three-way merge, checked again and run
  with the new best as its parent (recorded, with `proposed_on`); if it does not apply, it is recorded rejected
  with the conflict, and the agent's next proposal takes the slot.
- Stacking: an experiment that wins against its parent after another experiment was kept (two winners from the
  same parent) is recorded `superseded`, and its change is re-applied on top of the new best as a new experiment
  (agent `stacking`, `origin` = its index) and judged against it: kept only if the combination still wins. A
  conflict is recorded as that experiment's rejection.
- Kill-safe as the serial loop: an experiment is recorded `running` before it runs and decided once, the branch
  moves after the ledger. A SIGKILLed coordinator leaves `running` rows and process groups that the next session
  interrupts and kills (per-slot pid files); queued proposals were never recorded and are simply proposed again;
  a superseded experiment whose re-application was never recorded is stacked when the next session starts.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from . import briefing, scope
from .agents import AgentError, AgentExhausted, AgentSetupError, Context, Proposal, ProposalError
from .records import Experiment, State

if TYPE_CHECKING:
    from .executor import Slot
    from .gitrepo import Git
    from .session import Session

MAX_STACK = 3  # how many times one change is re-applied on a moving best before it is left superseded
MAX_AGENT_FAILURES = 5  # consecutive agent errors before the session pauses (as the serial loop)


class Stopped(Exception):
    """The coordinator has finished: a late call from another thread is refused."""


@dataclass(eq=False)
class Pending:
    """A change waiting for a slot: an agent's proposal (or its failure), or a winner to re-apply on the best."""

    base: Experiment  # the best when the agent proposed (for a stacked change: the superseded winner)
    proposal: Optional[Proposal] = None
    failure: Optional[tuple] = None  # (label, reason, usage) when the agent failed
    origin: Optional[Experiment] = None  # stacking: the superseded experiment whose change is re-applied


class LedgerProxy:
    """The ledger for every thread: a call from another thread is carried out by the coordinator."""

    def __init__(self, ledger, scheduler: "Scheduler"):
        self._ledger = ledger
        self._scheduler = scheduler

    def __getattr__(self, name: str):
        attribute = getattr(self._ledger, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: self._scheduler.call(attribute, *args, **kwargs)


class Scheduler:
    def __init__(self, session: "Session", slots: list["Slot"], queue_size: Optional[int] = None):
        self.session = session
        self.slots = slots
        self.queue_size = queue_size or len(slots) + 1
        self.owner = threading.current_thread()
        self.inbox: queue.Queue = queue.Queue()
        self.cond = threading.Condition()
        self.queue: deque[Pending] = deque()  # proposals waiting for a slot
        self.stacks: deque[Pending] = deque()  # winners to re-apply: before any new proposal
        self.applying: set[Pending] = set()  # taken by a slot, not yet recorded
        self.busy = 0  # slots working on an item
        self.proposing = True
        self.taken = 0  # proposals taken by slots: they count toward --experiments
        self.made = 0
        self.stopping = False
        self.closed = False
        self.reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.calibrating = threading.Lock()
        self.experiments: Optional[int] = None
        self.started = 0.0

    # ---------------------------------------------------------------- the coordinator

    def call(self, fn: Callable, *args, **kwargs):
        """Run `fn` on the coordinator thread and return (or raise) what it does."""
        if threading.current_thread() is self.owner:
            return fn(*args, **kwargs)
        future: Future = Future()
        with self.cond:
            if self.closed:
                raise Stopped()
            self.inbox.put((future, fn, args, kwargs))
        return future.result()

    def _serve(self, timeout: float) -> None:
        try:
            future, fn, args, kwargs = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def run(self, experiments: Optional[int], started: float) -> str:
        """Experiments on every slot until `experiments` proposals have been taken (None: until stopped or a
        limit), the agent has no more, or it failed too often; the reason the session ends."""
        session, ledger = self.session, self.session.ledger
        self.experiments, self.started = experiments, started
        worktrees = {slot.name: session.target.git.add_worktree(session.target.worktrees / slot.name,
                                                                 session._best_commit()) for slot in self.slots}
        for origin in self._unstacked(ledger.experiments(session.tag)):
            session.say(f"#{origin.index} was superseded and not yet re-applied: stacking it on the best")
            self.stacks.append(Pending(origin, origin=origin))
        session.say(f"{len(self.slots)} slots ({', '.join(self._describe(s) for s in self.slots)}), "
                    f"up to {self.queue_size} proposals ahead")
        session.ledger = LedgerProxy(ledger, self)
        threads = [threading.Thread(target=self._slot_main, args=(slot, worktrees[slot.name]), daemon=True,
                                    name=f"autoresearch-{slot.name}") for slot in self.slots]
        proposer = threading.Thread(target=self._propose_main, daemon=True, name="autoresearch-proposer")
        interrupted = False
        try:
            proposer.start()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                try:
                    self._serve(0.05)
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True
                    self._stop("stopped by the user", override=True)
                    session.executor.interrupt()
        finally:
            with self.cond:
                self.closed = True
                self.stopping = True
                self.cond.notify_all()
            while not self.inbox.empty():
                self.inbox.get_nowait()[0].set_exception(Stopped())
            session.ledger = ledger
        if interrupted:
            raise KeyboardInterrupt
        if self.error is not None:
            raise self.error
        return self.reason or f"done: {self.taken} experiments"

    @staticmethod
    def _describe(slot: "Slot") -> str:
        where = f"GPU {slot.visible_devices}" if slot.visible_devices is not None else slot.device
        return f"{slot.name}: {where}, {slot.threads} thread{'s' * (slot.threads > 1)}"

    def _stop(self, reason: str, override: bool = False) -> None:
        """Stop the slots now; `override`: this reason wins over an earlier one (the user's Ctrl-C does)."""
        with self.cond:
            self.reason = reason if override else self.reason or reason
            self.stopping = True
            self.cond.notify_all()

    def _end(self, reason: str) -> None:
        """No more proposals: the session ends once the slots are done."""
        with self.cond:
            self.reason = self.reason or reason
            self.proposing = False
            self.cond.notify_all()

    def _fail(self, exc: BaseException) -> None:
        if not isinstance(exc, Stopped) and not self.stopping:
            self.error = self.error or exc
            self._stop(f"harness error: {type(exc).__name__}: {exc}")
            self.session.executor.interrupt()

    # ---------------------------------------------------------------- the proposer

    def _propose_main(self) -> None:
        session = self.session
        failures = 0
        try:
            while True:
                with self.cond:
                    while not self.stopping and len(self.queue) >= self.queue_size:
                        self.cond.wait(0.5)
                    if self.stopping:
                        return
                    if self.experiments is not None and self.made >= self.experiments:
                        return
                reached = session._limit_reached(self.started)
                if reached:
                    self._end(f"stopped: {reached}")
                    return
                context = self.call(self._context)
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
        """What the agent knows (on the coordinator, so nothing is recorded half-way): the best, its editable
        files, the history, and the proposals not yet recorded."""
        session = self.session
        best = session.ledger.best(session.tag)
        config = session.target.config
        files = session.target.git.files_at(
            best.commit, lambda path: scope.matches(path, config.files.editable) and not scope.is_protected(path, config))
        with self.cond:
            pending = tuple(item.proposal for item in (*self.queue, *self.applying) if item.proposal is not None)
        return briefing.context(session, best, files, pending)

    # ---------------------------------------------------------------- the slots

    def _next(self) -> Optional[Pending]:
        with self.cond:
            while True:
                if self.stopping:
                    return None
                if self.stacks or (self.queue and (self.experiments is None or self.taken < self.experiments)):
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

    def _slot_main(self, slot: "Slot", worktree: "Git") -> None:
        try:
            while (item := self._next()) is not None:
                try:
                    self._work(item, slot, worktree)
                finally:
                    with self.cond:
                        self.applying.discard(item)
                        self.busy -= 1
                        self.cond.notify_all()
        except BaseException as exc:
            self._fail(exc)

    def _work(self, item: Pending, slot: "Slot", worktree: "Git") -> None:
        session = self.session
        if item.failure is not None:
            label, reason, usage = item.failure
            self.call(self._settle, item, lambda: session._spent(session._reject(item.base, Proposal(label), reason),
                                                                 usage))
            return
        with self.calibrating:  # the best gets more runs first when its noise is stale; one slot does it
            parent = session._recalibrated(worktree, slot, session.ledger.best(session.tag))
        experiment = self._begin(item, parent, slot, worktree)
        if experiment is None:
            return
        try:
            decision, runs = session.judged(experiment, worktree, slot, parent)
        except KeyboardInterrupt:
            return  # judged recorded it interrupted
        except BaseException:
            self.call(session.ledger.set_state, experiment.id, State.INTERRUPTED,
                      reason="the harness failed while it ran")
            raise
        self.call(self._decide, experiment, decision, runs, parent)

    def _settle(self, item: Pending, record: Callable):
        """Record what became of a taken item and forget it as pending, in one step on the coordinator."""
        try:
            return record()
        finally:
            with self.cond:
                self.applying.discard(item)

    def _begin(self, item: Pending, parent: Experiment, slot: "Slot", worktree: "Git") -> Optional[Experiment]:
        """Apply the item on `parent` (rebasing it when it was made on another best), check it, commit it and
        record it running; None when it was recorded rejected instead."""
        session = self.session
        origin = item.origin
        proposal = item.proposal or Proposal(f"stack #{origin.index} on #{parent.index}: {origin.description}")
        usage = proposal.meta.get("usage")
        agent = "stacking" if origin else proposal.meta.get("agent") or session.agent_name
        based_on = origin.parent if origin else item.base.commit

        def reject(reason: str, diff: str = "", added: int = 0, removed: int = 0) -> None:
            self.call(self._settle, item, lambda: session._spent(session._reject(
                parent, proposal, reason, diff, added, removed, agent=agent, slot=slot.name,
                proposed_on=based_on if based_on != parent.commit else None,
                origin=origin.index if origin else None), usage))

        try:
            conflict = self._apply(item, parent, worktree)
        except ProposalError as exc:
            reject(f"malformed proposal: {exc}")
            return None
        if conflict:
            where = f"#{parent.index} ({parent.commit[:9]})"
            reject(f"stacking #{origin.index} on {where}: {conflict}" if origin else
                   f"proposed on #{item.base.index} ({based_on[:9]}); the best moved to {where}, where the change "
                   f"does not apply: {conflict}")
            return None
        changes = worktree.stage_changes()
        diff, added, removed = worktree.staged_diff()
        problem = scope.violation(changes, worktree.root, session.target.config,
                                  before=lambda path: worktree.run("show", f"HEAD:{path}", check=False))
        if problem:
            reject(problem, diff, added, removed)
            return None
        rebased = based_on != parent.commit
        note = f"\nrebased from {based_on} onto {parent.commit}" if rebased else ""
        commit = worktree.commit_all(f"{proposal.description}\n\nautoresearch {session.tag}: proposed by {agent}{note}")
        knobs = session._knob_values(worktree.root)
        experiment = self.call(self._settle, item, lambda: session._took(proposal, session._spent(
            session.ledger.add_experiment(
                tag=session.tag, session_id=session.session_id, state=State.RUNNING, parent=parent.commit,
                commit=commit, description=proposal.description, agent=agent, diff=diff, lines_added=added,
                lines_removed=removed, knobs=knobs, slot=slot.name, proposed_on=based_on if rebased else None,
                origin=origin.index if origin else None), usage)))
        session.update_ref(session._experiment_ref(experiment), commit)
        if rebased and not origin:
            session.say(f"#{experiment.index} was proposed on #{item.base.index}; rebased onto the best #{parent.index}")
        return experiment

    def _apply(self, item: Pending, parent: Experiment, worktree: "Git") -> Optional[str]:
        """Put the item's change in the worktree on top of `parent`, staged or not; what conflicted, or None."""
        if item.origin is not None:
            base, change = item.origin.parent, item.origin.commit
        else:
            base, change = item.base.commit, None
            worktree.reset_to(base)
            self.session._apply(worktree, item.proposal)
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

    def _set_knobs(self, worktree: "Git", values: dict) -> bool:
        """Set the knobs to `values` in the worktree's files (the search's proposals are points, not edits)."""
        from . import knobs

        config = self.session.target.config
        declared = {knob.name: knob.file for knob in config.knobs}
        if not set(values) <= set(declared):
            return False
        for name, value in values.items():
            path = worktree.root / declared[name]
            try:
                path.write_text(knobs.set_value(path.read_text(), name, value))
            except (OSError, SyntaxError, knobs.KnobError):
                worktree.reset_to(worktree.head())
                return False
        return True

    # ---------------------------------------------------------------- decisions (on the coordinator)

    def _decide(self, experiment: Experiment, decision, runs: list, parent: Experiment) -> Experiment:
        session = self.session
        if self.stopping and decision.state is State.INTERRUPTED:
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
            with self.cond:
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
