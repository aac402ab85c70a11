"""How often does the judge keep a change that does nothing, and how often a real one, at what compute? From real
runs that share seeds, judged paired (as a session runs them) and unpaired.

    python benchmarks/judge_runs.py --out judge-runs.json --seeds 16 --budget 60steps   # collect (long; resumable)
    python benchmarks/judge.py judge-runs.json                                           # judge (seconds)

The runs (judge_runs.py): the built-in GPT target's CPU preset, every variant run with seeds 0..N-1, so run i of a
variant pairs with the baseline's run i as a candidate's run pairs with its parent's in a session. Each simulated
experiment draws `calibrate_seeds` of the N seeds for the parent (the baseline variant) and gives the candidate's
runs the first of those seeds, in order, from the candidate variant. The noise model is that calibration plus the
candidate's runs so far, as in a fresh session; with --noise-df D, an estimate with D degrees of freedom, as a
session knows it once it has pooled that many from its experiments. Cases:

- A/A: the candidate is the `stream` variant (one extra draw from torch's random stream before the model is built):
  the expected result is the baseline's, but paired runs start from other weights, so they are not bit-identical.
  Its runs are shifted by the difference of the two pools' means (sampling noise: with N seeds the pools differ by
  chance), so that over these seeds it does exactly nothing; the pairing is untouched.
- planted k sd: the A/A candidate's runs improved by exactly k times the baseline pool's seed-to-seed sd: effects of
  known size, with the pairing of a change that moves the random stream (the harshest kind that keeps the data order).
- same stream: the `lr` variant (MATRIX_LR x0.8, same stream and data order) shifted likewise to do nothing, then by
  k sd: the pairing of a knob change.
- real: the `lr` variant as it is.

Judged by the session's judge (stats.verdict: the paired test beside the unpaired one, each at half the
significance, where pairs are there), by the unpaired analysis alone (stats.verdict given no pairs: the judge before
pairing), by the reference loop's rule (one run, kept when lower than the parent's one run), and by a fixed rule of
K=3 seeds (kept when the mean is lower). Reported: keep rate and runs per decision. The rates hold for these N seeds:
a resampled experiment reuses them, so with N = 16 a rate near 5% is good to about +-2 points.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from autoresearch.config import JudgeSection
from autoresearch.stats import Noise, Rule, pooled_noise, verdict

CALIBRATION = JudgeSection().calibrate_seeds  # baseline runs a session calibrates on (the default)


def pools(saved: dict, budget: str) -> dict[str, dict[int, float]]:
    """{variant: {seed: val_bpb}} of the runs at `budget`, only seeds every variant has."""
    by_variant: dict[str, dict[int, float]] = defaultdict(dict)
    for run in saved["runs"]:
        if run["budget"] == budget:
            by_variant[run["variant"]][run["seed"]] = run["metric"]
    common = set.intersection(*(set(v) for v in by_variant.values()))
    return {name: {seed: values[seed] for seed in sorted(common)} for name, values in by_variant.items()}


def sequential(parent: list[float], candidate: list[float], rule: Rule, paired: bool,
               session_noise: Optional[Noise] = None) -> tuple[bool, int, str]:
    """The judge's decision on a candidate whose run i pairs with the parent's run i: (kept, runs, analysis).
    The noise is `session_noise` (what a session has pooled by then) or, without it, a fresh session's: the
    parent's calibration and the candidate's runs so far."""
    runs: list[float] = []
    for value in candidate:
        runs.append(value)
        noise = session_noise or pooled_noise([parent, runs])
        pairs = [p - c for p, c in zip(parent, runs)] if paired else ()
        v = verdict(runs, parent, noise, rule, minimize=True, pairs=pairs,
                    paired_looks=min(len(parent), rule.max_runs) if paired else None)
        if v.keep is not None:
            return bool(v.keep), len(runs), v.analysis
    return False, len(runs), "unpaired"


@functools.lru_cache(maxsize=8)
def pooled_boundary(significance: float, looks: int, df: int) -> float:
    """The one boundary of a paired test over looks n = 2..looks whose spread is known with `df` degrees of freedom."""
    rng = np.random.default_rng(1)
    diffs = rng.standard_normal((200_000, looks))
    sd = np.sqrt(rng.chisquare(df, 200_000) / df)
    t = [diffs[:, :n].mean(axis=1) * np.sqrt(n) / sd for n in range(2, looks + 1)]
    return float(np.quantile(np.max(t, axis=0), 1 - significance))


def pooled_paired(parent: list[float], candidate: list[float], rule: Rule, sd: float, df: int) -> tuple[bool, int]:
    """What the targets need and the judge does not do: a paired test whose spread of differences is pooled over
    other experiments (`sd`, `df`), so that two runs can decide. Same clear-loser stop as the judge's."""
    bound = pooled_boundary(rule.significance, rule.max_runs, df)
    diffs: list[float] = []
    for p, c in zip(parent, candidate):
        diffs.append(p - c)
        se = sd / len(diffs) ** 0.5
        mean = statistics.fmean(diffs)
        if len(diffs) >= 2 and mean / se > bound:
            return True, len(diffs)
        if mean + rule.t_stop(df) * se < 0 or len(diffs) == rule.max_runs:
            return False, len(diffs)
    return False, len(diffs)


def simulate(pool: dict[str, dict[int, float]], trials: int, rule: Rule, calibration: int = CALIBRATION,
             seed: int = 0, noise_df: Optional[int] = None) -> list[dict]:
    """Keep rates and runs per decision of each rule, per case. `noise_df`: judge as a session whose noise
    estimate has pooled that many degrees of freedom by then (each experiment's estimate drawn around the
    baseline pool's sd as such an estimate scatters); without it, as a fresh session."""
    rng = random.Random(seed)
    draws = np.random.default_rng(seed)
    seeds = sorted(pool["baseline"])
    base = pool["baseline"]
    sd = statistics.stdev(base.values())
    # What a variant's mean over these seeds differs from the baseline's by: its effect for the lr change, sampling
    # noise for the stream change (whose expected result is the baseline's). Subtracted, the pools differ by nothing.
    shift = {name: statistics.fmean(pool[name].values()) - statistics.fmean(base.values()) for name in ("stream", "lr")}
    cases = [("A/A: random stream moved", "stream", shift["stream"])]
    cases += [(f"planted {k:g} sd (stream moved)", "stream", shift["stream"] + k * sd) for k in (1, 2, 4)]
    cases += [("A/A: same stream (lr, recentred)", "lr", shift["lr"])]
    cases += [(f"planted {k:g} sd (same stream)", "lr", shift["lr"] + k * sd) for k in (1, 2, 4)]
    cases += [(f"real: MATRIX_LR x0.8 ({-shift['lr'] / sd:+.2f} sd)", "lr", 0.0)]
    # The pooled alternative's spread: the knob change's pairs over all N seeds, as a line of knob changes would
    # teach it; right for the same-stream cases, what it would wrongly apply to the stream-moving ones.
    knob_pairs = [base[s] - pool["lr"][s] for s in seeds]
    pooled = (statistics.stdev(knob_pairs), len(seeds) - 1)
    results = []
    for label, variant, shift in cases:
        tally = {name: [0, 0] for name in ("judge", "unpaired", "pooled", "reference", "fixed3")}
        paired_keeps = 0
        for _ in range(trials):
            # seed positions 0, 1, ...: the parent has the first `calibration`, the candidate the first max_runs
            drawn = rng.sample(seeds, max(calibration, rule.max_runs))
            parent = [base[s] for s in drawn[:calibration]]
            candidate = [pool[variant][s] - shift for s in drawn[:rule.max_runs]]
            session_noise = None
            if noise_df:
                session_noise = Noise(sd * float(np.sqrt(draws.chisquare(noise_df) / noise_df)), noise_df)
            for name, paired in (("judge", True), ("unpaired", False)):
                kept, runs, analysis = sequential(parent, candidate, rule, paired, session_noise)
                tally[name][0] += kept
                tally[name][1] += runs
                paired_keeps += kept and analysis == "paired"
            kept, runs = pooled_paired(parent, candidate, rule, *pooled)
            tally["pooled"][0] += kept
            tally["pooled"][1] += runs
            tally["reference"][0] += candidate[0] < parent[0]
            tally["reference"][1] += 1
            tally["fixed3"][0] += statistics.fmean(candidate[:3]) < statistics.fmean(parent)
            tally["fixed3"][1] += 3
        row = {"case": label}
        for name, (kept, runs) in tally.items():
            row[f"{name}_keep_rate"], row[f"{name}_runs"] = kept / trials, runs / trials
        row["judge_paired_share"] = paired_keeps / max(1, tally["judge"][0])
        results.append(row)
    return results


def pairing(pool: dict[str, dict[int, float]]) -> list[str]:
    """How much pairing buys: the sd of seed-paired differences next to that of unpaired ones (sqrt 2 sd)."""
    base = pool["baseline"]
    sd = statistics.stdev(base.values())
    lines = []
    for name in sorted(set(pool) - {"baseline"}):
        other = pool[name]
        diffs = [base[s] - other[s] for s in base]
        r = statistics.correlation(list(base.values()), [other[s] for s in base])
        lines.append(f"  {name:8s} paired differences: sd {statistics.stdev(diffs):.4f} = "
                     f"{statistics.stdev(diffs) / (2 ** 0.5 * sd):.2f} x sqrt(2) sd of the baseline; correlation {r:+.2f}")
    return lines


def describe(saved: dict, budget: str, pool: dict[str, dict[int, float]]) -> None:
    runs = [run for run in saved["runs"] if run["budget"] == budget]
    loads = [run["load"] for run in runs]
    print(f"runs at {budget} on {saved['data']}: {len(pool['baseline'])} seeds of {', '.join(pool)} (load average "
          f"{min(loads):.1f}-{max(loads):.1f} while they ran)")
    for name, values in pool.items():
        v = list(values.values())
        steps = [run["steps"] for run in runs if run["variant"] == name and run["steps"] is not None]
        spread = f", steps {min(steps):.0f}-{max(steps):.0f}" if steps and min(steps) != max(steps) else ""
        print(f"  {name:8s} val_bpb {statistics.fmean(v):.4f} ± {statistics.stdev(v):.4f}{spread}")
    print("\n".join(pairing(pool)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the JSON file benchmarks/judge_runs.py wrote")
    parser.add_argument("--trials", type=int, default=20000, help="simulated experiments per case")
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--calibrate", type=int, default=CALIBRATION,
                        help=f"the parent's calibration runs (default: [judge] calibrate_seeds, {CALIBRATION})")
    parser.add_argument("--noise-df", type=int, metavar="N",
                        help="judge as a session whose noise estimate has N degrees of freedom by then (pooled over "
                             "its earlier experiments) instead of a fresh session's calibration")
    parser.add_argument("--max-runs", type=int, default=JudgeSection().max_runs,
                        help="the most runs a candidate gets (default: [judge] max_runs, %(default)s)")
    args = parser.parse_args()
    saved = json.loads(Path(args.runs).read_text())
    rule = Rule(max_runs=args.max_runs)
    out = {}
    for budget in sorted({run["budget"] for run in saved["runs"]}):
        pool = pools(saved, budget)
        if "baseline" not in pool or len(pool["baseline"]) < 2:
            continue
        describe(saved, budget, pool)
        if set(pool) != {"baseline", "stream", "lr"} or len(pool["baseline"]) < args.calibrate:
            print(f"  (no judge table: it needs the baseline, stream and lr variants on {args.calibrate}+ seeds)\n")
            continue
        sd = statistics.stdev(pool["baseline"].values())
        known = (f"the noise known to {args.noise_df} degrees of freedom" if args.noise_df
                 else "the noise from the calibration and the candidate's runs (a fresh session)")
        print(f"judge: significance {rule.significance}, max {rule.max_runs} runs; calibration {args.calibrate} runs; "
              f"{known}; {args.trials} simulated experiments per case; 1 sd = {sd:.4f}\n")
        results = simulate(pool, args.trials, rule, args.calibrate, noise_df=args.noise_df)
        header = (f"{'case':36s} {'judge: kept':>11s} {'runs':>5s} {'(paired)':>8s} {'unpaired: kept':>14s} "
                  f"{'runs':>5s} {'pooled: kept':>12s} {'runs':>5s} {'reference':>9s} {'fixed K=3':>9s}")
        print(header)
        print("-" * len(header))
        for r in results:
            print(f"{r['case']:36s} {r['judge_keep_rate']:11.1%} {r['judge_runs']:5.2f} {r['judge_paired_share']:8.0%} "
                  f"{r['unpaired_keep_rate']:14.1%} {r['unpaired_runs']:5.2f} {r['pooled_keep_rate']:12.1%} "
                  f"{r['pooled_runs']:5.2f} {r['reference_keep_rate']:9.1%} {r['fixed3_keep_rate']:9.1%}")
        print("\njudge: the session's (paired beside unpaired); (paired): the share of its keeps the paired test decided. "
              "unpaired: the unpaired test alone (the judge before pairing). pooled: a paired test whose spread is "
              "pooled from the knob change's pairs (not used: see stats.py). Runs per decision: reference 1, fixed "
              "K=3: 3.\n")
        out[budget] = results
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
