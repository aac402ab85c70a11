"""What happened, as plain immutable data: experiment and run records and their states.

The ledger stores these; everything that reads the ledger (status, export, agents' memory,
reports) works on them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Optional


class State(str, enum.Enum):
    """An experiment's state. The first two are transient; the rest are final."""

    PROPOSED = "proposed"
    RUNNING = "running"
    BASELINE = "baseline"
    KEPT = "kept"
    DISCARDED = "discarded"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"  # it won against its parent, but a sibling won first: re-applied on top of it (stacked)

    @property
    def final(self) -> bool:
        return self not in (State.PROPOSED, State.RUNNING)


class RunState(str, enum.Enum):
    OK = "ok"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"  # the run broke a rule (tampered with protected files or git); its number is void


@dataclass(frozen=True)
class Flag:
    """Something the harness noticed and recorded for the human: a rejection's cause, an ignored claim."""

    kind: str  # scope, metric, git, sandbox, implausible, ...
    message: str


@dataclass(frozen=True)
class RunRecord:
    """One execution of the target for one experiment and one seed."""

    experiment_id: int
    seed: int
    state: RunState
    metric: Optional[float]
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0  # wall time of all the run's commands
    peak_memory_mb: Optional[float] = None
    exit_code: Optional[int] = None
    reason: str = ""
    log_tail: str = ""
    log_path: str = ""
    flags: tuple = ()  # Flag, ...
    id: Optional[int] = None
    slot: Optional[str] = None  # where it ran (Slot.name)
    started_at: Optional[float] = None  # wall clock (time.time()) when its first command started
    budget: Optional[str] = None  # the budget it ran under ("60s", "500steps"): only runs at one budget compare


@dataclass(frozen=True)
class Experiment:
    """One proposal applied as one commit on a parent commit, with its outcome."""

    id: int
    tag: str
    index: int  # position within the tag's history; the baseline is 0
    state: State
    parent: Optional[str]
    commit: Optional[str]
    description: str
    agent: str
    diff: str = ""
    lines_added: int = 0
    lines_removed: int = 0
    reason: str = ""
    knobs: dict = field(default_factory=dict)
    metric: Optional[float] = None
    seconds: Optional[float] = None
    session_id: Optional[int] = None
    created_at: float = 0.0
    finished_at: Optional[float] = None
    effect: Optional[float] = None  # the judge's estimate of the improvement over the parent (positive: better)
    effect_se: Optional[float] = None  # its standard error
    margin: Optional[float] = None  # what the effect had to clear
    runs: tuple = ()
    slot: Optional[str] = None  # the slot its runs used
    proposed_on: Optional[str] = None  # the best commit the agent saw, when the change was rebased onto a newer one
    origin: Optional[int] = None  # stacked: the index of the experiment whose change this re-applies
    analysis: Optional[str] = None  # what decided: paired / unpaired / deterministic / plain (judge.py)

    @property
    def ok(self) -> bool:
        """Whether it produced a metric that can be compared."""
        return self.metric is not None and math.isfinite(self.metric)

    @property
    def metrics(self) -> list[float]:
        """The metric of each successful run."""
        return [run.metric for run in self.runs if run.state is RunState.OK and run.metric is not None]

    @property
    def budget(self) -> Optional[str]:
        """The budget it was judged at: its first run's (runs added later, e.g. by calibration, may differ)."""
        return self.runs[0].budget if self.runs else None

    def runs_at(self, budget: str) -> list[RunRecord]:
        """Its successful runs under `budget`: the only ones a comparison at that budget may use."""
        return [run for run in self.runs if run.state is RunState.OK and run.metric is not None
                and run.budget == budget]

    def metrics_at(self, budget: str) -> list[float]:
        return [run.metric for run in self.runs_at(budget)]


@dataclass(frozen=True)
class Suggestion:
    """An idea the human queued (`autoresearch suggest`) for the next proposal to consider."""

    id: int
    text: str
    tag: Optional[str] = None  # the tag it is for; None: whichever tag runs next
    created_at: float = 0.0
    experiment_id: Optional[int] = None  # the experiment whose proposal took it up; None while it waits


@dataclass(frozen=True)
class Note:
    """What an LLM agent wrote down for its later proposals (its `note` tool): shown in their research memory."""

    id: int
    tag: str
    text: str
    after: int  # the index of the latest experiment of the research line when it was written
    agent: str = ""
    created_at: float = 0.0
