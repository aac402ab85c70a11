"""The judge: from an experiment's runs, decide its state (kept, discarded, crashed, ...).

This is the plain rule: keep when the mean over seeds beats the current best by more than
`judge.min_delta`. A failed run always loses, whatever its number.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from .config import Config
from .records import Experiment, RunRecord, RunState, State


@dataclass(frozen=True)
class Decision:
    state: State
    metric: Optional[float]
    reason: str
    effect: Optional[float] = None  # improvement over the best, positive is better


def decide(runs: list[RunRecord], best: Optional[Experiment], config: Config) -> Decision:
    for state, outcome in ((RunState.INTERRUPTED, State.INTERRUPTED), (RunState.REJECTED, State.REJECTED),
                           (RunState.TIMEOUT, State.TIMEOUT), (RunState.CRASHED, State.CRASHED)):
        failed = [run for run in runs if run.state is state]
        if failed:
            return Decision(outcome, None, f"seed {failed[0].seed}: {failed[0].reason}")
    metric = statistics.fmean(run.metric for run in runs)
    if best is None or best.metric is None:
        return Decision(State.BASELINE, metric, "baseline")
    effect = (best.metric - metric) if config.minimize else (metric - best.metric)
    name = config.metric.name
    if effect > config.judge.min_delta:
        return Decision(State.KEPT, metric, f"{name} {metric:.6g} beats {best.metric:.6g} by {effect:.3g}", effect)
    return Decision(State.DISCARDED, metric,
                    f"{name} {metric:.6g} does not beat {best.metric:.6g} by more than {config.judge.min_delta:g}",
                    effect)
