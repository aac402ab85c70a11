"""How often does the judge keep a change that does nothing, and how often a real one, at what compute?

    python benchmarks/judge.py                          # 24 seeds per pool, 100-step budget, shakespeare
    python benchmarks/judge.py --seeds 40 --budget 300steps --json judge.json

Two phases.

1. Pools of real runs, through the harness's own Runner and executor: the built-in GPT target's
   CPU preset trained with --seeds different seeds, for the baseline code and for a real change
   (MATRIX_LR halved: a learning-rate change whose true effect is estimated from its whole pool).

2. Decisions drawn from those pools (resampling without replacement inside each simulated
   experiment; --trials of them per case):
   - A/A: the candidate's runs come from the baseline pool: any keep is a false keep.
   - planted: the candidate's runs are baseline-pool runs improved by exactly 1, 2 and 4 times the
     pool's standard deviation, so the true effect is known.
   - real: the candidate's runs come from the MATRIX_LR pool.
   Each case is judged by our sequential judge (stats.verdict, with the noise model a session has
   after calibrating the baseline on the default `calibrate_seeds` runs), by the reference loop's
   rule (one run, kept when strictly better than the baseline's run), and by a fixed rule running K=3 seeds (kept when the
   mean is better than the baseline's mean). Reported: keep rate and runs spent per decision.

Not a test: phase 1 takes tens of minutes on a CPU. Re-running phase 2 on saved pools:
`--pools FILE` (the JSON this script writes).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from autoresearch import knobs
from autoresearch.budget import Budget
from autoresearch.config import JudgeSection
from autoresearch.executor import LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec
from autoresearch.stats import Rule, pooled_noise, verdict

from prepared_target import prepared_target

CALIBRATION = JudgeSection().calibrate_seeds  # baseline runs a session calibrates on (the default)
CHANGE = ("MATRIX_LR", 0.5)  # the real change: this constant times this factor


def run_pools(work: Path, data: str, budget: Budget, seeds: int, device: str) -> dict[str, list[float]]:
    target = prepared_target(work / "target", data)
    root = target.root
    variant = work / "variant"
    shutil.copytree(root, variant, ignore=shutil.ignore_patterns(".autoresearch", ".git"))
    source = (variant / "train.py").read_text()
    name, factor = CHANGE
    (variant / "train.py").write_text(knobs.set_value(source, name, knobs.read(source, name) * factor))
    executor = LocalExecutor(device)
    slot = executor.slots()[0]
    runner = Runner(target, executor)
    pools: dict[str, list[float]] = {"baseline": [], "change": []}
    for seed in range(seeds):
        for role, tree in (("baseline", root), ("change", variant)):
            spec = RunSpec(0, tree, seed, budget, 3600.0, work / "runs" / f"{role}-{seed}")
            record = runner.run(spec, slot)
            if record.state is not RunState.OK:
                sys.exit(f"{role} seed {seed}: {record.state.value}: {record.reason}\n{record.log_tail[-2000:]}")
            pools[role].append(record.metric)
            print(f"{role:8s} seed {seed:3d}: val_bpb {record.metric:.4f}  ({record.seconds:.0f}s)", flush=True)
    return pools


def simulate(pools: dict[str, list[float]], trials: int, rule: Rule, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    base = pools["baseline"]
    sd = statistics.stdev(base)
    change_effect = statistics.fmean(base) - statistics.fmean(pools["change"])
    cases = [("A/A (no change)", "baseline", 0.0), ("planted 1 sd", "baseline", 1.0),
             ("planted 2 sd", "baseline", 2.0), ("planted 4 sd", "baseline", 4.0),
             (f"real: {CHANGE[0]} x{CHANGE[1]:g} ({change_effect / sd:+.2f} sd)", "change", 0.0)]
    results = []
    for label, source, shift in cases:
        kept = {"ours": 0, "reference": 0, "fixed3": 0}
        runs = {"ours": 0, "reference": 0, "fixed3": 0}
        for _ in range(trials):
            if source == "baseline":
                draw = rng.sample(base, CALIBRATION + rule.max_runs)
                parent, pool = draw[:CALIBRATION], [v - shift * sd for v in draw[CALIBRATION:]]
            else:
                parent = rng.sample(base, CALIBRATION)
                pool = rng.sample(pools["change"], rule.max_runs)
            noise = pooled_noise([parent])
            candidate = []
            for value in pool:
                candidate.append(value)
                v = verdict(candidate, parent, noise, rule, minimize=True)
                if v.keep is not None:
                    break
            kept["ours"] += bool(v.keep)
            runs["ours"] += len(candidate)
            kept["reference"] += pool[0] < parent[0]  # one run against the best's one run
            runs["reference"] += 1
            kept["fixed3"] += statistics.fmean(pool[:3]) < statistics.fmean(parent)
            runs["fixed3"] += 3
        results.append({"case": label, **{f"{k}_keep_rate": kept[k] / trials for k in kept},
                        **{f"{k}_runs": runs[k] / trials for k in runs}})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="100steps", help="per run (a step budget: independent of machine load)")
    parser.add_argument("--seeds", type=int, default=24, help="runs per pool")
    parser.add_argument("--data", default="shakespeare", help="shakespeare or stdlib")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trials", type=int, default=20000, help="simulated experiments per case")
    parser.add_argument("--pools", metavar="FILE", help="skip phase 1: read the pools from this JSON")
    parser.add_argument("--json", metavar="FILE", help="write pools and results here")
    args = parser.parse_args()
    budget = Budget.parse(args.budget)
    if args.pools:
        saved = json.loads(Path(args.pools).read_text())
        pools, info = saved["pools"], saved["info"]
    else:
        work = Path(tempfile.mkdtemp(prefix="judge-bench-"))
        try:
            pools = run_pools(work, args.data, budget, args.seeds, args.device)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        info = {"budget": str(budget), "data": args.data, "seeds": args.seeds, "device": args.device}
    rule = Rule()
    results = simulate(pools, args.trials, rule)
    base, change = pools["baseline"], pools["change"]
    print(f"\npools ({info['budget']}, {info['data']}, {len(base)} seeds each): baseline val_bpb "
          f"{statistics.fmean(base):.4f} ± {statistics.stdev(base):.4f}, {CHANGE[0]} x{CHANGE[1]:g} "
          f"{statistics.fmean(change):.4f} ± {statistics.stdev(change):.4f}")
    print(f"judge: significance {rule.significance}, max {rule.max_runs} runs; calibration {CALIBRATION} runs; "
          f"{args.trials} simulated experiments per case\n")
    header = f"{'case':34s} {'ours: kept':>10s} {'runs':>5s} {'reference: kept':>16s} {'fixed K=3: kept':>16s}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['case']:34s} {r['ours_keep_rate']:10.1%} {r['ours_runs']:5.2f} {r['reference_keep_rate']:16.1%} "
              f"{r['fixed3_keep_rate']:16.1%}")
    print("\nruns per decision: reference 1, fixed K=3: 3")
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "pools": pools, "results": results}, indent=1))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
