"""The judge: after each run of an experiment, decide its state, or ask for one more run.

A failed run (crashed, timed out, rejected, interrupted) decides at once: more seeds would only
spend compute. Otherwise the rule of the [judge] table applies:

- `statistical` (default): the sequential test of stats.py against the noise model. The i-th run
  of every experiment uses seed i, so a candidate's runs pair with its parent's.
- `plain`: every seed of `run.seeds` runs, and the mean must beat the best by more than
  `min_effect`: the reference loop's rule, kept for comparison and for deterministic targets.

The baseline runs `calibrate_seeds` times (statistical) so the noise is known before anything is
judged against it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Optional

from . import stats
from .config import Config
from .records import Experiment, RunRecord, RunState, State

FAILURES = ((RunState.INTERRUPTED, State.INTERRUPTED), (RunState.REJECTED, State.REJECTED),
            (RunState.TIMEOUT, State.TIMEOUT), (RunState.CRASHED, State.CRASHED))


@dataclass(frozen=True)
class Decision:
    state: Optional[State]  # None: run one more seed
    metric: Optional[float]
    reason: str
    effect: Optional[float] = None  # improvement over the best, positive is better
    se: Optional[float] = None
    margin: Optional[float] = None


def rule(config: Config) -> stats.Rule:
    judge = config.judge
    return stats.Rule(judge.significance, judge.min_effect, judge.line_cost, judge.max_runs)


def seed(config: Config, position: int) -> int:
    """The seed of an experiment's run number `position` (0-based); past the plain rule's list, new ones."""
    if config.judge.rule != "plain":
        return position
    seeds = config.run.seeds
    return seeds[position] if position < len(seeds) else max(seeds) + 1 + position - len(seeds)


def runs_wanted(config: Config, baseline: bool) -> int:
    """How many runs an experiment gets at most (the baseline: exactly)."""
    if config.judge.rule == "plain":
        return len(config.run.seeds)
    return config.judge.calibrate_seeds if baseline else config.judge.max_runs


def seed_ignored(values: list[float]) -> bool:
    """Two or more runs with different seeds and exactly the same metric: the target does not use the seed, and
    more calibration runs would only repeat the number."""
    return len(values) >= 2 and max(values) - min(values) <= 1e-12 * max(1.0, abs(values[0]))


def decide(runs: list[RunRecord], best: Optional[Experiment], config: Config, noise: stats.Noise,
           lines_added: int = 0, lines_removed: int = 0) -> Decision:
    for run_state, outcome in FAILURES:
        failed = [run for run in runs if run.state is run_state]
        if failed:
            return Decision(outcome, None, f"seed {failed[0].seed}: {failed[0].reason}")
    values = [run.metric for run in runs]
    metric = statistics.fmean(values)
    if best is None or not best.ok:
        if len(runs) < runs_wanted(config, baseline=True) and not (config.judge.rule == "statistical"
                                                                  and seed_ignored(values)):
            return Decision(None, metric, "calibrating")
        return Decision(State.BASELINE, metric, f"baseline over {len(runs)} run{'s' * (len(runs) > 1)}; "
                                                f"noise {noise.describe()}")
    name = config.metric.name
    if config.judge.rule == "plain" or not noise.known:
        if len(runs) < len(config.run.seeds) and config.judge.rule == "plain":
            return Decision(None, metric, "more seeds")
        effect = (best.metric - metric) if config.minimize else (metric - best.metric)
        need = config.judge.min_effect
        if effect > need:
            return Decision(State.KEPT, metric, f"{name} {metric:.6g} beats {best.metric:.6g} by {effect:.3g}",
                            effect, None, need)
        return Decision(State.DISCARDED, metric,
                        f"{name} {metric:.6g} does not beat {best.metric:.6g} by more than {need:g}", effect, None, need)
    verdict = stats.verdict(values, best.metrics or [best.metric], noise, rule(config), minimize=config.minimize,
                            lines_added=lines_added, lines_removed=lines_removed)
    se = verdict.se if math.isfinite(verdict.se) else None
    if verdict.keep is None:
        return Decision(None, metric, verdict.reason, verdict.effect, se, verdict.margin)
    return Decision(State.KEPT if verdict.keep else State.DISCARDED, metric, f"{name} {metric:.6g}: {verdict.reason}",
                    verdict.effect, se, verdict.margin)


def implausible(decision: Decision, noise: stats.Noise, best_gain: Optional[float], config: Config) -> Optional[str]:
    """Why a keep looks too good to be true (to be confirmed on more seeds and the test split), or None."""
    if decision.state is not State.KEPT or decision.effect is None or not noise.known or noise.deterministic:
        return None
    factor = config.judge.implausible
    bound = factor * max(noise.sd, best_gain or 0.0)
    if decision.effect <= bound:
        return None
    basis = f"{factor:g}x the best gain so far ({best_gain:.4g})" if best_gain and best_gain > noise.sd \
        else f"{factor:g}x the noise sd ({noise.sd:.4g})"
    return f"implausible jump: a gain of {decision.effect:.4g} is more than {basis}"
