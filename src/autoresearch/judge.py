"""The judge: after each run of an experiment, decide its state, or ask for one more run.

A failed run (crashed, timed out, rejected, interrupted) decides at once: more seeds would only
spend compute. Otherwise the rule of the [judge] table applies:

- `statistical` (default): the sequential test of stats.py against the noise model. The i-th run
  of every experiment uses seed i, so a candidate's runs pair with its parent's: where they do,
  a paired test runs beside the unpaired one, and the decision says which decided (`analysis`).
- `plain`: every seed of `run.seeds` runs, and the mean must beat the best by more than
  `min_effect`: the reference loop's rule, kept for comparison and for deterministic targets.

Runs are compared at one budget only: a candidate against its parent's runs at the session's
budget, never a mean taken at another. The baseline runs `calibrate_seeds` times (statistical) so
the noise is known before anything is judged against it; a best with no runs at the session's
budget is re-baselined there first (`refresh`, used by Session._refreshed).
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
    analysis: Optional[str] = None  # what decided: paired, unpaired, deterministic, plain (None: a failure, a baseline)


CONFIRM_SEEDS = 3  # seeds of the test-split comparison that confirms an implausible jump (its interval needs pairs)


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


def differences(runs: list[RunRecord], parent: list[RunRecord]) -> list[float]:
    """Parent minus candidate for every seed both ran successfully (the sign of "better" left to the caller)."""
    by_seed = {run.seed: run.metric for run in parent if run.state is RunState.OK and run.metric is not None}
    return [by_seed[run.seed] - run.metric for run in runs
            if run.state is RunState.OK and run.metric is not None and run.seed in by_seed]


@dataclass(frozen=True)
class Refresh:
    """More runs the best needs at the session's budget before a change is compared with it."""

    reason: str
    runs: int          # successful runs it should have there
    calibration: bool  # a calibration (the noise is recorded from it), or a top-up of a kept change's runs


def refresh(best: Experiment, budget: str, noise: stats.Noise, calibrated: Optional[float], config: Config) -> Optional[Refresh]:
    """What the best needs before a change is compared with it at `budget`, or None.

    No run there: the line was measured at another budget, and comparing across budgets compares the budgets, so
    the best is re-baselined there. Too few runs (statistical rule) while the noise is unknown, or while the best
    is more than `recalibrate_after` noise sds from the mean of the last calibration (`calibrated`) at the budget:
    the noise may differ where the metric is now, so it is calibrated again.

    Otherwise (statistical rule) a best with fewer runs than a candidate may get (at most calibrate_seeds) is topped
    up to that many. A change kept after two runs is the parent of every change after it: against a parent of two
    runs the unpaired standard error is sqrt(2) times that of one run and the paired test has too few pairs to run,
    so the judge keeps 13-15% of 1-sd gains and 82-88% of 2-sd ones; against four runs, 51-97% and 100%
    (`benchmarks/judge.py --calibrate 2` and `4`, `--noise-df 40`). A run that failed counts here: a best whose
    top-up fails is left as it is rather than tried again before every experiment."""
    values = best.metrics_at(budget)
    wanted = runs_wanted(config, baseline=True)
    if not values:
        return Refresh(f"it has no run at budget {budget} (the line was measured at {best.budget}): re-baselining it "
                       f"there on {wanted} seeds", wanted, True)
    if config.judge.rule != "statistical":
        return None
    if len(values) < wanted:
        if not noise.known:
            return Refresh(f"the noise at budget {budget} is unknown", wanted, True)
        moved = abs(statistics.fmean(values) - calibrated) / noise.sd if calibrated is not None and noise.sd > 0 else 0.0
        if moved > config.judge.recalibrate_after:
            return Refresh(f"the best moved {moved:.0f} noise sds since the last calibration", wanted, True)
    paired = min(config.judge.max_runs, wanted)
    tried = sum(run.budget == budget for run in best.runs)
    if tried < paired and not noise.deterministic:
        return Refresh(f"it was kept on {len(values)} runs at {budget}: {paired} make every run of a candidate pair "
                       f"with one of its own", paired, False)
    return None


def confirmed_on_test(effect: dict) -> tuple[bool, str]:
    """Whether a test-split comparison (verify.paired_effect) confirms a gain: the lower end of its paired
    interval above zero, not a point estimate. And what to say about it."""
    if effect["effect"] is None:
        return False, effect["verdict"]
    if effect["ci"] is None:
        return False, f"test split effect {effect['effect']:+.4g} with {effect['verdict']}"
    low, high = effect["ci"]
    shown = f"test split effect {effect['effect']:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}] over {effect['pairs']} seeds"
    return low > 0, shown


def decide(runs: list[RunRecord], best: Optional[Experiment], config: Config, noise: stats.Noise, *, budget: str,
           lines_added: int = 0, lines_removed: int = 0) -> Decision:
    """The decision after `runs` (all at `budget`) against the best's runs at that budget (never at another);
    `noise`: the noise model at the budget."""
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
        return Decision(State.BASELINE, metric, f"baseline over {len(runs)} run{'s' * (len(runs) > 1)} at {budget}; "
                                                f"noise {noise.describe()}")
    parent = best.runs_at(budget)
    if not parent:  # Session._refreshed re-baselines the best first: this is a harness bug, never a guess
        raise ValueError(f"#{best.index} has no successful run at budget {budget} to compare with")
    name = config.metric.name
    if config.judge.rule == "plain":
        if len(runs) < len(config.run.seeds):
            return Decision(None, metric, "more seeds")
        reference = statistics.fmean(run.metric for run in parent)
        effect = (reference - metric) if config.minimize else (metric - reference)
        need = config.judge.min_effect
        if effect > need:
            return Decision(State.KEPT, metric, f"{name} {metric:.6g} beats {reference:.6g} by {effect:.3g}",
                            effect, None, need, "plain")
        return Decision(State.DISCARDED, metric, f"{name} {metric:.6g} does not beat {reference:.6g} by more than "
                                                 f"{need:g}", effect, None, need, "plain")
    if not noise.known:  # never one run against an unknown noise: a second run of the candidate measures it
        return Decision(None, metric, f"the noise at budget {budget} is not known yet: one more run to measure it")
    sign = 1.0 if config.minimize else -1.0
    seeds = {seed(config, position) for position in range(config.judge.max_runs)}  # what the candidate's runs use
    verdict = stats.verdict(values, [run.metric for run in parent], noise, rule(config), minimize=config.minimize,
                            lines_added=lines_added, lines_removed=lines_removed,
                            pairs=[sign * d for d in differences(runs, parent)],
                            paired_looks=len(seeds & {run.seed for run in parent}))
    se = verdict.se if math.isfinite(verdict.se) else None
    state = None if verdict.keep is None else State.KEPT if verdict.keep else State.DISCARDED
    reason = verdict.reason if state is None else f"{name} {metric:.6g}: {verdict.reason}"
    return Decision(state, metric, reason, verdict.effect, se, verdict.margin, verdict.analysis)


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
