"""A run's wall time beyond its training budget, on the built-in GPT target, with its processes forked from warm
servers (forkserver.py) and with each started as a new interpreter.

    python benchmarks/run_overhead.py [--budget 60s] [--seeds 2] [--data stdlib]

Makes a fresh built-in target, prepares its data, then runs seeds through the harness's own Runner and local
executor (jail, limits, scrubbed environment, as in a session), alternating: forked, then spawned. Each mode
keeps its executor across its runs, as a session does, and runs one unmeasured run first (the servers' own
start, once per session). Prints per run: wall time, training seconds (as train.py reports them), the overhead
(wall less training) and the evaluator's own seconds. Not a test: it takes minutes, and a shared machine moves it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.runner import Runner, RunSpec

from prepared_target import prepared_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--data", default="stdlib")
    args = parser.parse_args()
    budget = Budget.parse(args.budget)
    with tempfile.TemporaryDirectory() as work:
        target = prepared_target(Path(work) / "gpt", args.data)
        overheads: dict[str, list[float]] = {"forked": [], "spawned": []}
        executors = {mode: LocalExecutor("cpu") for mode in overheads}
        executors["spawned"].forks = False
        print(f"budget {budget} | {args.seeds} seeds | data {args.data}")
        print(f"{'processes':10s} {'seed':>4s} {'wall':>8s} {'training':>9s} {'overhead':>9s} {'evaluation':>10s}")
        try:
            for seed in range(-1, args.seeds):  # seed -1: the warm-up run, not measured
                for mode, executor in executors.items():
                    started = time.monotonic()
                    record = Runner(target, executor).run(
                        RunSpec(0, target.root, max(seed, 0), budget if seed >= 0 else Budget.parse("2steps"),
                                budget.value * 3 + 120, Path(work) / "runs" / f"{mode}{seed}"),
                        executor.slots()[0])
                    wall = time.monotonic() - started
                    if record.metric is None:
                        sys.exit(f"run failed: {record.reason}")
                    if seed < 0:
                        continue
                    training = record.metrics["training_seconds"]
                    overheads[mode].append(wall - training)
                    print(f"{mode:10s} {seed:4d} {wall:7.2f}s {training:8.2f}s {wall - training:8.2f}s "
                          f"{record.metrics.get('eval_seconds', float('nan')):9.2f}s")
        finally:
            for executor in executors.values():
                executor.close()
        for mode, values in overheads.items():
            print(f"overhead, processes {mode:7s}: mean {statistics.fmean(values):.2f}s "
                  f"(min {min(values):.2f}s, max {max(values):.2f}s)")


if __name__ == "__main__":
    main()
