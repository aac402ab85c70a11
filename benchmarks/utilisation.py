"""Accelerator utilisation: the fraction of slot time spent inside training budgets.

    python benchmarks/utilisation.py --target gpt [--budget 8s] [--latency 0 4] [--experiments 4]
    python benchmarks/utilisation.py --target timed [--budget 12s] [--latency 0 6] [--startup 2.5 --evaluation 2.5]
    python benchmarks/utilisation.py --target gpt --device cuda --budget 60s --latency 0 --experiments 3 \\
        --modes pipelined

`--target gpt`: the built-in GPT target (`stdlib` data; the preset of `--device`, the CPU's by default).
`--target timed`: a target whose commands take fixed times (python's own start, then `--startup` seconds;
training sleeps for the budget; the evaluator takes `--evaluation` seconds), so that what is measured is the
loop, not a machine shared with other jobs.

For each configuration a new tag: its baseline, then `--experiments` experiments proposed by the
offline search, each proposal delayed by the agent latency (a stand-in for an LLM call). Measured from the end of
the baseline to the end of the last experiment:

    utilisation = sum of the runs' training seconds (as train.py reports them) / (slots x that window)
    steady      = the same over each slot's own span, from its first run's start to its last run's end (what is
                  left once the pipeline is full: the first proposals' wait is a one-time cost per session)

Configurations: one slot as the reference loop runs it (serial: propose, run, judge), one slot pipelined (the
agent proposes while it trains), and `--slots` slots (pipelined). For the reference loop, the formula
budget / (budget + startup + evaluation + agent) is computed from the same runs: startup + evaluation = a run's
wall time less its training seconds, agent = the latency. The judge is the plain rule (one run per experiment).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import agents, assemble, scheduler
from autoresearch.agents import Agent
from autoresearch.budget import Budget
from autoresearch.records import RunState, State
from autoresearch.target import Target, init, prepare


class SlowSearch(Agent):
    """The search agent, answering after `latency` seconds."""

    name = "search"

    def __init__(self, latency: float):
        super().__init__()
        self.latency = latency
        self.inner = agents.create("search")

    def propose(self, context):
        time.sleep(self.latency)
        return self.inner.propose(context)


TIMED_TRAIN = """import json, os, time
STARTUP = {startup}  # seconds before training starts (imports, data, compilation)
X = 1.0  # a knob
Y = 2    # another knob
time.sleep(STARTUP)
start = time.monotonic()
time.sleep(float(os.environ["AUTORESEARCH_BUDGET_SECONDS"]))
training = time.monotonic() - start
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({{"X": X, "Y": Y}}, f)
print(f"training_seconds: {{training:.3f}}")
"""

TIMED_EVALUATE = """import json, os, time
time.sleep({evaluation})
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json")) as f:
    model = json.load(f)
print(f"score: {{(model['X'] - 3.0) ** 2 + 0.1 * abs(model['Y'] - 5)}}")
"""

TIMED_CONFIG = """[commands]
train = "python train.py"
evaluate = "python evaluate.py"
[files]
editable = ["train.py"]
protected = ["evaluate.py"]
[metric]
name = "score"
[budget]
default = "{budget}"
timeout = 900
[judge]
rule = "plain"
final_test_seeds = 0
[[knobs]]
name = "X"
file = "train.py"
low = 0.1
high = 10.0
log = true
[[knobs]]
name = "Y"
file = "train.py"
type = "int"
low = 0
high = 10
"""


def make_timed_target(root: Path, budget: str, startup: float, evaluation: float) -> Target:
    root.mkdir(parents=True)
    (root / "train.py").write_text(TIMED_TRAIN.format(startup=startup))
    (root / "evaluate.py").write_text(TIMED_EVALUATE.format(evaluation=evaluation))
    (root / "autoresearch.toml").write_text(TIMED_CONFIG.format(budget=budget))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "timed target"]):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    return Target.open(root)


def make_target(root: Path, budget: str) -> Target:
    init(root)
    config = root / "autoresearch.toml"
    config.write_text(config.read_text().replace('rule = "statistical"', 'rule = "plain"')
                      .replace("final_test_seeds = 3", "final_test_seeds = 0")
                      .replace('default = "60s"', f'default = "{budget}"\ntimeout = 900'))  # a loaded machine
    subprocess.run(["git", "-C", str(root), "commit", "-qam", "benchmark: plain judge"], check=True)
    target = Target.open(root)
    if prepare(target, "stdlib"):
        raise SystemExit("prepare failed")
    return target


def measure(target: Target, tag: str, slots: int, pipeline: bool, latency: float, experiments: int,
            budget: Budget, device: str = "cpu") -> dict:
    executor = assemble.executor("local", device, slots if slots > 1 else None)
    with assemble.opened(target, SlowSearch(latency), "search", executor, tag=tag, budget=budget,
                         say=lambda text: None) as session:
        scheduler.run(session, experiments, final_test=False, pipeline=pipeline)
        done = session.ledger.experiments(tag)
    baseline, rest = done[0], [e for e in done[1:] if e.state is not State.INTERRUPTED]
    if not rest:
        sys.exit(f"{tag}: no experiment finished after the baseline (interrupted?)")
    start, end = baseline.finished_at, max(e.finished_at for e in rest)
    runs = [r for e in rest for r in e.runs if r.state is RunState.OK]
    training = sum(r.metrics.get("training_seconds", 0.0) for r in runs)
    overhead = statistics.fmean(r.seconds - r.metrics.get("training_seconds", 0.0) for r in runs)
    window = end - start
    spans = {}  # per slot: from its first run's start to its last run's end (the pipeline filled)
    for r in runs:
        first, last = spans.get(r.slot, (r.started_at, r.started_at + r.seconds))
        spans[r.slot] = (min(first, r.started_at), max(last, r.started_at + r.seconds))
    busy = sum(last - first for first, last in spans.values())
    overheads = [round(r.seconds - r.metrics.get("training_seconds", 0.0), 1) for r in (*baseline.runs, *runs)]
    return {"slots": slots, "pipeline": pipeline, "latency": latency, "experiments": len(rest), "runs": len(runs),
            "overheads": overheads,
            "window": window, "training": training, "utilisation": training / (slots * window),
            "steady": training / busy if busy else 0.0,
            "run_overhead": overhead, "mean_training": training / len(runs),
            "reference": budget.value / (budget.value + overhead + latency)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("gpt", "timed"), default="timed")
    parser.add_argument("--startup", type=float, default=2.5, help="timed: seconds before training starts")
    parser.add_argument("--evaluation", type=float, default=2.5, help="timed: seconds the evaluator takes")
    parser.add_argument("--budget", default="8s")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 4.0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (one slot per GPU) | auto")
    parser.add_argument("--modes", default="serial,pipelined,slots",
                        help="which configurations: serial (1 slot), pipelined (1 slot), slots (--slots, pipelined)")
    args = parser.parse_args()
    budget = Budget.parse(args.budget)
    modes = {"serial": (1, False), "pipelined": (1, True), "slots": (args.slots, True)}
    configurations = [modes[mode] for mode in args.modes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.target == "gpt":
            target = make_target(Path(tmp) / "gpt", args.budget)
        else:
            target = make_timed_target(Path(tmp) / "timed", args.budget, args.startup, args.evaluation)
        what = (f"gpt ({args.device})" if args.target == "gpt"
                else f"timed (startup {args.startup:g}s, evaluation {args.evaluation:g}s)")
        print(f"target {what} | budget {budget} | {args.experiments} experiments per line | search agent delayed by "
              f"{', '.join(f'{x:g}s' for x in args.latency)}")
        print(f"{'slots':>5} {'mode':<9} {'agent':>6} {'runs':>4} {'window':>8} {'training':>9} {'run overhead':>13} "
              f"{'utilisation':>11} {'steady':>7} {'reference loop':>15}")
        for latency in args.latency:
            for slots, pipeline in configurations:
                tag = f"s{slots}{'p' if pipeline else 'r'}{int(latency * 10)}"
                row = measure(target, tag, slots, pipeline, latency, args.experiments, budget, args.device)
                print(f"{slots:>5} {'pipelined' if pipeline else 'serial':<9} {latency:>5g}s {row['runs']:>4} "
                      f"{row['window']:>7.1f}s {row['training']:>8.1f}s {row['run_overhead']:>12.2f}s "
                      f"{row['utilisation']:>11.3f} {row['steady']:>7.3f} {row['reference']:>15.3f}", flush=True)
                print(f"      each run's wall time beyond its training seconds, the baseline's first: "
                      f"{', '.join(f'{x:g}s' for x in row['overheads'])}", flush=True)


if __name__ == "__main__":
    main()
