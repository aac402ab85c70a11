"""Time to the first experiment of a new tag, with 1 and 2 slots: the baseline's calibration runs are
spread over the free slots, so with two slots the first experiment should start about twice as soon.

    flock /tmp/autoresearch-bench.lock python benchmarks/first_experiment.py [--pairs 2] [--seeds 4] [--budget 3s]

The target is utilisation.py's timed one (python's own start, then `--startup` seconds; training sleeps for the
budget; the evaluator takes `--evaluation` seconds), so what is measured is the harness's scheduling, not a CPU
shared with other jobs; its judge is the statistical one, calibrating the baseline with `--seeds` runs. Each
measurement is a fresh target and a new tag run by the command a user types,
`autoresearch run --agent search --experiments 1 --slots N`, with 1 and 2 slots in alternation (1, 2, 1, 2, ...:
a load that drifts hits both alike). From the ledger: the time from the session's start to the first experiment's
row (it is recorded when the experiment starts running), and the baseline's own duration.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from utilisation import make_timed_target

JUDGE = 'rule = "statistical"\ncalibrate_seeds = {seeds}\nmax_runs = 2'
NOISE = 'print(f"score: {0.01 * int(os.environ.get(\'AUTORESEARCH_SEED\', \'0\')) + '


def measure(root: Path, slots: int, args) -> dict:
    target = make_timed_target(root, args.budget, args.startup, args.evaluation)
    config = target.root / "autoresearch.toml"
    config.write_text(config.read_text().replace('rule = "plain"', JUDGE.format(seeds=args.seeds)))
    evaluate = target.root / "evaluate.py"  # a metric that moves with the seed, so the whole calibration runs
    evaluate.write_text(evaluate.read_text().replace('print(f"score: {', NOISE))
    subprocess.run(["git", "-C", str(root), "commit", "-qam", "a statistical judge"], check=True)
    env = {**os.environ, **({"PYTHONPATH": args.pythonpath} if args.pythonpath else {})}
    done = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "-C", str(root), "--tag", "t", "--agent",
                           "search", "--experiments", "1", "--device", "cpu", args.slots_flag, str(slots)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"autoresearch run failed:\n{done.stdout}\n{done.stderr}")
    db = sqlite3.connect(root / ".autoresearch" / "ledger.sqlite")
    (started,) = db.execute("SELECT started_at FROM sessions ORDER BY id LIMIT 1").fetchone()
    (base_start, base_end), (first,) = (db.execute("SELECT created_at, finished_at FROM experiments WHERE idx = 0")
                                        .fetchone(), db.execute("SELECT created_at FROM experiments WHERE idx = 1")
                                        .fetchone())
    used = {slot for (slot,) in db.execute("SELECT r.slot FROM runs r JOIN experiments e ON e.id = r.experiment_id "
                                           "WHERE e.idx = 0")}
    db.close()
    return {"slots": slots, "first": first - started, "baseline": base_end - base_start, "baseline_slots": len(used)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="measurements of each configuration")
    parser.add_argument("--seeds", type=int, default=4, help="the baseline's calibration runs")
    parser.add_argument("--budget", default="3s")
    parser.add_argument("--startup", type=float, default=0.5, help="seconds before training starts")
    parser.add_argument("--evaluation", type=float, default=0.5, help="seconds the evaluator takes")
    parser.add_argument("--slots-flag", default="--slots", help="--workers measures a version from before the rename")
    parser.add_argument("--pythonpath", help="the sessions run the autoresearch found here (another version's src/)")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    print(f"timed target | budget {args.budget}, startup {args.startup:g}s, evaluation {args.evaluation:g}s | "
          f"baseline calibrated on {args.seeds} runs | autoresearch from {args.pythonpath or 'this installation'} | "
          f"load average before: {' '.join(load)}")
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for slots in (1, 2):
                row = measure(Path(tmp) / f"p{pair}s{slots}", slots, args)
                results[slots].append(row)
                print(f"  {slots} slot{'s' * (slots > 1)}: first experiment after {row['first']:6.1f}s "
                      f"(baseline {row['baseline']:5.1f}s on {row['baseline_slots']} slot"
                      f"{'s' * (row['baseline_slots'] > 1)})", flush=True)
    for slots, rows in results.items():
        print(f"{slots} slot{'s' * (slots > 1)}: time to the first experiment {statistics.median(r['first'] for r in rows):.1f}s "
              f"(median of {len(rows)}), baseline {statistics.median(r['baseline'] for r in rows):.1f}s")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"] * 3
    print(f"load average after: {' '.join(load)}")


if __name__ == "__main__":
    main()
