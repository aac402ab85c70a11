"""What one evaluation of the built-in GPT target costs a run: the evaluate command's wall time, as the harness runs it.

    python benchmarks/eval_cost.py [--runs 5] [--data stdlib] [--device cpu] [--reference OLD_EVALUATE.py]

Makes a fresh built-in target, prepares its data, trains one model (a few steps: the evaluation's cost does not
depend on how good the model is), then runs the target's evaluate command on it through the harness's own
Runner settings and local executor: the jail, the limits, the scrubbed environment, forked from a warm server
as in a session (one unmeasured evaluation first starts the server). With --reference, an older evaluate.py
(the one that imported train.py into its own process:
`git show 2b0dfab:src/autoresearch/templates/gpt/evaluate.py > /tmp/old.py`) is run on the same model,
alternating with the current one, so that both see the same machine load. Prints per evaluation its wall time
(the job, from the harness's side) and the evaluator's own eval_seconds, then the mean of each and their ratio.
Not a test: it takes a minute or more, and a shared machine moves it (hold /tmp/autoresearch-bench.lock).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from autoresearch import forkserver
from autoresearch.budget import Budget
from autoresearch.executor import Job, LocalExecutor
from autoresearch.runner import Runner, RunSpec, _empty
from autoresearch.target import command_argv

from prepared_target import prepared_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="training steps of the model that is scored")
    parser.add_argument("--reference", type=Path, help="another evaluate.py to compare with, run alternately")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        target = prepared_target(Path(work) / "gpt", args.data)
        root = target.root
        evaluators = {"current": "evaluate.py"}
        if args.reference:
            shutil.copy(args.reference, root / "evaluate_reference.py")
            evaluators["reference"] = "evaluate_reference.py"
        model = Path(work) / "model"
        env = {**os.environ, "AUTORESEARCH_DATA": str(target.data / "train"), "AUTORESEARCH_OUT": str(model),
               "AUTORESEARCH_SEED": "0", "AUTORESEARCH_DEVICE": args.device,
               "AUTORESEARCH_BUDGET_STEPS": str(args.steps)}
        subprocess.run([sys.executable, "train.py"], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)

        executor = LocalExecutor(args.device)
        slot = executor.slots()[0]
        runner = Runner(target, executor)
        out = runner.staging(slot)
        spec = RunSpec(0, root, 0, Budget.parse(f"{args.steps}steps"), 600, Path(work) / "run")
        spec.directory.mkdir()
        limits = target.config.sandbox.limits()

        def job(script: str) -> Job:
            argv = command_argv(f"python {script}")
            return Job(argv, root, runner.env(spec, slot, out, target.data), 600, spec.directory / "log.txt",
                       target.pids / f"{slot.name}.{script}.pid", runner.jail((out,)), limits,
                       preload=forkserver.script_imports(argv, root, root))

        def evaluate(script: str) -> tuple[float, dict]:
            _empty(out)  # the same directory each time: a warm server's jail has it bound
            for path in model.iterdir():
                shutil.copy(path, out / path.name)
            result = executor.run(job(script), slot)
            if result.exit_code != 0:
                sys.exit(f"{script} failed (exit {result.exit_code}):\n"
                         + (spec.directory / "log.txt").read_text()[-3000:])
            return result.seconds, json.loads((out / "metrics.json").read_text())

        print(f"device {args.device} | data {args.data} | model trained {args.steps} steps | load {os.getloadavg()}")
        print(f"{'evaluator':10s} {'run':>3s} {'wall':>7s} {'eval_seconds':>12s} {'val_bpb':>9s} {'tokens':>8s} "
              f"{'probes (largest difference, nats)':>34s}")
        walls: dict[str, list[float]] = {name: [] for name in evaluators}
        try:
            for run in range(-1, args.runs):  # run -1: each evaluator's server starts, not measured
                for name, script in evaluators.items():
                    wall, metrics = evaluate(script)
                    if run < 0:
                        continue
                    walls[name].append(wall)
                    probes = (f"{metrics['probes']} ({metrics['probe_max_diff']:.3g})" if "probes" in metrics
                              else "-")
                    print(f"{name:10s} {run:3d} {wall:6.2f}s {metrics.get('eval_seconds', float('nan')):11.2f}s "
                          f"{metrics['val_bpb']:9.4f} {metrics.get('eval_tokens', 0):8d} {probes:>34s}")
        finally:
            executor.close()
        for name, values in walls.items():
            print(f"{name:10s} mean {statistics.fmean(values):.2f}s (min {min(values):.2f}s, max {max(values):.2f}s)")
        if "reference" in walls:
            current, reference = walls["current"], walls["reference"]
            print(f"current / reference: means {statistics.fmean(current) / statistics.fmean(reference):.3f}, "
                  f"medians {statistics.median(current) / statistics.median(reference):.3f}")
        print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
