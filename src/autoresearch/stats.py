"""The statistics behind every keep-or-discard: the noise model and the sequential decision rule.

Noise model. The spread of the metric between runs of the same code with different seeds, as a
standard deviation `sd` with `df` degrees of freedom. It is pooled over every experiment that has
two or more successful runs at one budget (the baseline's calibration seeds first, then every
confirmation), so the estimate sharpens as a session goes on. sd == 0 with df >= 1 means the metric
is deterministic: one run decides.

Decision. The effect d is the improvement of the candidate's mean over its parent's mean
(positive is better, whatever the goal). Its standard error is sd * sqrt(1/n + 1/n_parent). The
margin the effect must clear is the user's minimum effect plus a price per net line of code added
(in noise units): a change that adds much code needs a larger gain, and one that removes code may
be kept when it is not significantly worse than the margin allows (a non-inferiority test).

    keep     when n >= 2 and d - t_keep * se > margin     (unpaired; t_keep: one boundary for every
                                                           look 2..max_runs; see below)
    keep     when k >= 2 pairs and (mean(d_i) - margin) / (sd(d_i) / sqrt k) > t_k    (paired; below)
    discard  when d + t_stop * se < margin                 (a clear loser: stops after one run)
    discard  when n == max_runs and not kept
    else     one more run

A single promising run is never kept: it triggers confirmation runs. t_keep is set so that a change
that does nothing is kept with probability `significance` over all its looks together: the looks
reuse the same runs, so splitting the significance evenly over them (Bonferroni) would waste most
of it and cost power. The boundary is the (1 - significance) quantile of the largest t statistic
over the looks when nothing changed, simulated from the noise model's degrees of freedom and the
parent's number of runs (fixed random stream: the same inputs always give the same boundary). The
stop for clear losers is left out of that simulation, so it can only lower the false-keep rate.

Pairing. Run i of every experiment uses seed i, so where the parent has runs with the candidate's
seeds (same budget), each pair differs by the change plus whatever the seed does not fix: under a
step or token budget the same initialisation and data order, unless the change moves the random
stream. The paired test uses the differences d_i of the k pairs so far, with their own standard
deviation: valid whatever the correlation of the pair, which depends on the change (a knob change
keeps it high, a new parameter moves every initial weight) and so cannot be borrowed from other
experiments: a pooled estimate of it would be set by the changes before, and a line of cosmetic
changes (bit-identical runs) would drive it to zero. It runs beside the unpaired test, each at half
the significance (so the false-keep rate stays within `significance` whatever the correlation), with
one nominal level for every look k = 2..max_runs (a Student t quantile with k - 1 degrees of
freedom each), simulated so that the looks together keep a change that does nothing with
probability significance / 2. Whether pairs are there is settled by the parent's runs before the
candidate's first run, so the split is fixed in advance: the paired test runs where the parent has
runs with three or more of the candidate's seeds (with two, its one look would have one degree of
freedom); otherwise the unpaired test gets all of it. The verdict says which test decided
(`analysis`).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.special import stdtrit  # the Student t quantile: scipy.stats would cost seconds to import

STOP_CONFIDENCE = 0.7  # a run whose effect is below the margin even at this upper confidence bound stops
BOUNDARY_DRAWS = 200_000  # simulated null experiments per boundary: its quantile is good to about +-0.005
PAIRED_SHARE = 0.5  # of the significance, spent on the paired test where the parent's runs pair with the candidate's


@dataclass(frozen=True)
class Noise:
    """Run-to-run standard deviation of the metric, and how much evidence it rests on."""

    sd: float
    df: int  # degrees of freedom: runs minus groups
    groups: int = 0  # experiments that contributed

    @property
    def known(self) -> bool:
        return self.df >= 1

    @property
    def deterministic(self) -> bool:
        return self.known and self.sd == 0.0

    def describe(self) -> str:
        if not self.known:
            return "unknown (no experiment has two successful runs yet)"
        if self.deterministic:
            return f"none: repeated runs agree exactly ({self.df + self.groups} runs)"
        return f"sd {self.sd:.4g} ({self.df} degrees of freedom, {self.groups} experiment{'s' * (self.groups != 1)})"


def pooled_noise(samples: Iterable[Sequence[float]]) -> Noise:
    """Pool the within-group variance of groups of metrics (each group: one code version, several seeds)."""
    squares, df, groups, scale = 0.0, 0, 0, 1.0
    for values in samples:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if len(values) < 2:
            continue
        mean = statistics.fmean(values)
        squares += sum((v - mean) ** 2 for v in values)
        df += len(values) - 1
        groups += 1
        scale = max(scale, abs(mean))
    if not df:
        return Noise(float("nan"), 0, 0)
    sd = math.sqrt(squares / df)
    return Noise(sd if sd > 1e-12 * scale else 0.0, df, groups)  # equal runs differ by rounding only


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Two-sided interval for the mean of `values` (Student t)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return (mean, mean) if n else (float("nan"), float("nan"))
    half = stdtrit(n - 1, 0.5 + level / 2) * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Rule:
    """The judge's settings (from the [judge] table)."""

    significance: float = 0.05
    min_effect: float = 0.0
    line_cost: float = 0.02  # noise standard deviations of margin per net line added
    max_runs: int = 4

    def t_keep(self, df: int, n_parent: int, significance: Optional[float] = None) -> float:
        return keep_boundary(significance or self.significance, self.max_runs, n_parent, df)

    def t_stop(self, df: int) -> float:
        return float(stdtrit(df, STOP_CONFIDENCE))

    def paired_keep(self, pairs: int, looks: int) -> float:
        """The t value the paired statistic over `pairs` pairs must clear, when pairs grow up to `looks`."""
        return float(stdtrit(pairs - 1, 1 - paired_level(self.significance * PAIRED_SHARE, looks)))


@functools.lru_cache(maxsize=256)
def keep_boundary(significance: float, max_runs: int, n_parent: int, df: int) -> float:
    """The t value every look n = 2..max_runs must clear so that, with no true effect, P(any look does) = significance.

    Simulated in units of the true sd: the parent's mean over `n_parent` runs, the candidate's running
    means, and one noise estimate with `df` degrees of freedom shared by every look, as in `verdict`. The
    candidate's runs are drawn independent of the parent's: runs that share a seed are correlated positively
    if at all, which only narrows the difference, so the boundary holds for paired seeds too."""
    looks = range(2, max(max_runs, 2) + 1)
    rng = np.random.default_rng(20261122)
    parent = rng.standard_normal((BOUNDARY_DRAWS, n_parent)).mean(axis=1)
    runs = rng.standard_normal((BOUNDARY_DRAWS, max(looks)))
    sd = np.sqrt(rng.chisquare(df, BOUNDARY_DRAWS) / df) if df < 10_000 else 1.0
    running_mean = runs.cumsum(axis=1) / np.arange(1, runs.shape[1] + 1)
    largest = np.max([(parent - running_mean[:, n - 1]) / (sd * math.sqrt(1 / n + 1 / n_parent)) for n in looks], axis=0)
    return float(np.quantile(largest, 1 - significance))


@functools.lru_cache(maxsize=64)
def paired_level(significance: float, looks: int) -> float:
    """The one-sided level of the paired t test at each look k = 2..`looks` pairs (a Student t quantile with k - 1
    degrees of freedom each), such that with no true effect P(any look clears it) = significance.

    The differences are simulated as independent normals: whatever the correlation of paired runs, their
    differences over seeds are independent and alike, and the t statistic does not depend on their scale."""
    if looks < 2:
        return significance
    rng = np.random.default_rng(20261123)
    diffs = rng.standard_normal((BOUNDARY_DRAWS, looks))
    t = []
    for k in range(2, looks + 1):
        part = diffs[:, :k]
        t.append(part.mean(axis=1) / (part.std(axis=1, ddof=1) / math.sqrt(k)))
    t = np.array(t)
    low, high = significance / (looks - 1), significance  # Bonferroni over the looks is too strict; one look, too loose
    for _ in range(40):
        level = (low + high) / 2
        bounds = np.array([stdtrit(k - 1, 1 - level) for k in range(2, looks + 1)])[:, None]
        if (t > bounds).any(axis=0).mean() > significance:
            high = level
        else:
            low = level
    return low


@dataclass(frozen=True)
class Verdict:
    keep: Optional[bool]  # None: not decided yet, run again
    effect: float  # improvement, positive is better
    se: float  # its standard error (nan when the noise is unknown)
    margin: float  # what the effect had to clear
    runs: int
    reason: str
    analysis: str = "unpaired"  # which analysis the effect, se and decision are from: paired, unpaired, deterministic


def margin(rule: Rule, noise: Noise, lines_added: int, lines_removed: int) -> float:
    scale = noise.sd if noise.known and math.isfinite(noise.sd) else 0.0
    return rule.min_effect + rule.line_cost * scale * (lines_added - lines_removed)


def paired_t(differences: Sequence[float], need: float) -> tuple[float, float, float]:
    """(mean difference, its standard error, t against `need`) over seed-paired differences (positive is better).
    Equal differences have no spread: t is then infinite in the direction of the mean, 0 on the margin."""
    k = len(differences)
    mean = statistics.fmean(differences)
    se = statistics.stdev(differences) / math.sqrt(k)
    if se > 1e-12 * max(1.0, abs(mean)):
        return mean, se, (mean - need) / se
    return mean, 0.0, math.copysign(math.inf, mean - need) if mean != need else 0.0


def verdict(candidate: Sequence[float], parent: Sequence[float], noise: Noise, rule: Rule, *, minimize: bool,
            lines_added: int = 0, lines_removed: int = 0, pairs: Sequence[float] = (),
            paired_looks: Optional[int] = None) -> Verdict:
    """The decision after the candidate's runs so far (`candidate`: their metrics, all successful).

    `pairs`: the candidate's improvements over the parent seed by seed, for the seeds both ran (positive is
    better); `paired_looks`: how many pairs they can grow to (the parent's runs, at most max_runs). With three or
    more, the paired test runs beside the unpaired one, each at its share of the significance."""
    n, n_parent = len(candidate), len(parent)
    if n == 0 or n_parent == 0:
        raise ValueError("a verdict needs at least one run of the candidate and of its parent")
    if not noise.known:
        raise ValueError("the noise is unknown: calibrate first (two or more runs of one commit)")
    diff = statistics.fmean(parent) - statistics.fmean(candidate)
    effect = diff if minimize else -diff
    need = margin(rule, noise, lines_added, lines_removed)
    lines = lines_added - lines_removed
    priced = f" (incl. {rule.line_cost:g} sd x {lines:+d} lines)" if lines and noise.sd > 0 else ""
    if noise.deterministic:
        keep = effect > need
        return Verdict(keep, effect, 0.0, need, n, f"effect {effect:+.4g} {'>' if keep else '<='} margin "
                                                    f"{need:.4g}{priced} (deterministic metric: one run decides)",
                       "deterministic")
    looks = min(paired_looks or 0, rule.max_runs)
    # Decided by the parent's runs, before any of the candidate's, so the split is fixed in advance. Two pairs at most
    # would give one look at one degree of freedom (a t boundary near 13): not worth half the significance.
    paired = looks >= 3
    also = ""  # what the paired test said, when it did not keep
    if paired and len(pairs) >= 2:
        mean, pse, t = paired_t(pairs, need)
        bound = rule.paired_keep(len(pairs), looks)
        if t > bound:
            return Verdict(True, mean, pse, need, n, f"paired effect {mean:+.4g} ± {pse:.2g} over {len(pairs)} seeds: "
                                                      f"t {t:.3g} clears {bound:.3g} (margin {need:.4g}{priced})",
                           "paired")
        also = f"; paired {mean:+.4g} ± {pse:.2g}, t {t:.3g} below {bound:.3g}"
    se = noise.sd * math.sqrt(1 / n + 1 / n_parent)
    shown = f"effect {effect:+.4g} ± {se:.2g} (n={n} vs {n_parent}{also})"
    share = rule.significance * (1 - PAIRED_SHARE) if paired else rule.significance
    low = effect - rule.t_keep(noise.df, n_parent, share) * se
    if n >= 2 and low > need:
        return Verdict(True, effect, se, need, n, f"{shown}: lower bound {low:+.4g} clears margin {need:.4g}{priced} "
                                                  f"(unpaired)")
    high = effect + rule.t_stop(noise.df) * se
    if high < need:
        return Verdict(False, effect, se, need, n, f"{shown}: clearly below margin {need:.4g}{priced}")
    if n >= rule.max_runs:
        return Verdict(False, effect, se, need, n, f"{shown}: not significant after {n} runs "
                                                   f"(lower bound {low:+.4g}, margin {need:.4g}{priced})")
    return Verdict(None, effect, se, need, n, f"{shown}: promising, confirming")
