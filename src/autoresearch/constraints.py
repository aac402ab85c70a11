"""Constraints: bounds on numbers a run reports besides the metric, for research with more than one objective.

    [[constraints]]
    metric = "peak_memory_mb"   # any number of the run's metrics: the evaluator's metrics.json, `key: value` lines
    max = 4000                  # min = ..., or relative to the baseline: max_ratio = 1.5, min_ratio = 0.9

A change is judged on its metric as usual, and discarded, with the constraint it broke as the
reason, as soon as the mean over its runs so far breaks one (so a change that doubles the memory
stops after one run). A number the run does not report breaks its constraint: a change cannot
escape a bound by no longer reporting the number. A ratio is taken against the baseline's mean at the
change's budget (a line resumed at twice its budget takes twice as long per run); when the baseline did not
report the number, or never ran at that budget, the ratio is not checked.

Which numbers to trust: the evaluator's own (num_params_M counted from the weights), and
`run_seconds`, the wall time of the whole run (training and evaluation) on the harness's clock,
are measured outside the agent's code; numbers the training script reports (tokens_per_second,
peak_memory_mb) are only as honest as that script, which in the `train` program is the agent's.
"""

from __future__ import annotations

import statistics
from typing import Iterable, Optional

from .config import Constraint
from .records import Experiment, RunRecord, RunState

HARNESS = {"run_seconds": "wall time of the whole run, training and evaluation, on the harness's clock"}


def value(run: RunRecord, name: str) -> Optional[float]:
    if name == "run_seconds":
        return run.seconds or None
    found = run.metrics.get(name)
    return float(found) if isinstance(found, (int, float)) and not isinstance(found, bool) else None


def mean(runs: Iterable[RunRecord], name: str) -> Optional[float]:
    values = [v for v in (value(run, name) for run in runs if run.state is RunState.OK) if v is not None]
    return statistics.fmean(values) if values else None


def reference(baseline: Optional[Experiment], name: str, budget: Optional[str] = None) -> Optional[float]:
    """The baseline's mean of `name` at `budget` (default: the one it was judged at), what a ratio is taken of."""
    if baseline is None:
        return None
    return mean(baseline.runs_at(budget or baseline.budget), name)


def describe(constraint: Constraint, baseline: Optional[float] = None) -> str:
    """`run_seconds <= 1.5x the baseline's (12.3)`, `peak_memory_mb <= 4000`."""
    parts = []
    shown = f" ({baseline:.4g})" if baseline is not None else ""
    for bound, sign in (("max", "<="), ("min", ">=")):
        if getattr(constraint, bound) is not None:
            parts.append(f"{sign} {getattr(constraint, bound):g}")
        if getattr(constraint, f"{bound}_ratio") is not None:
            parts.append(f"{sign} {getattr(constraint, f'{bound}_ratio'):g}x the baseline's{shown}")
    return f"{constraint.metric} {' and '.join(parts)}"


def broken(constraints: list[Constraint], runs: list[RunRecord], baseline: Optional[Experiment]) -> Optional[str]:
    """Why the runs so far break a constraint (the first one they break), or None."""
    budget = next((run.budget for run in runs if run.budget), None)  # a change's runs share one
    for constraint in constraints:
        name = constraint.metric
        current = mean(runs, name)
        if current is None:
            if any(run.state is RunState.OK for run in runs):
                return f"constraint {describe(constraint)}: the runs report no {name}"
            continue
        reference_value = reference(baseline, name, budget)
        limits = [("max", constraint.max, 1.0), ("min", constraint.min, 1.0)]
        if reference_value is not None:
            limits += [("max", constraint.max_ratio, reference_value), ("min", constraint.min_ratio, reference_value)]
        for kind, bound, scale in limits:
            if bound is None:
                continue
            limit = bound * scale
            if (kind == "max" and current > limit) or (kind == "min" and current < limit):
                return (f"constraint {describe(constraint, reference_value)} broken: {name} {current:.4g} "
                        f"{'above' if kind == 'max' else 'below'} {limit:.4g}")
    return None
