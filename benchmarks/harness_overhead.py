"""Harness overhead per experiment: wall time spent outside the target's own commands.

Runs real sessions (real git, SQLite, subprocesses) on a toy target whose train command does
almost nothing, and subtracts the time the executor spent inside those commands. What remains
is the harness's cost per experiment: the agent's proposal, git, scope checks, the ledger.

    python benchmarks/harness_overhead.py [--experiments 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import assemble, scheduler
from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.target import Target

TRAIN = """import os
X = 1.0  # a knob
Y = 2    # another knob
print(f"score: {(X - 3.0) ** 2 + 0.1 * abs(Y - 5)}")
"""

CONFIG = """[commands]
train = "python train.py"
[files]
editable = ["train.py"]
[metric]
name = "score"
[budget]
default = "10steps"
timeout = 60
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


class TimedExecutor(LocalExecutor):
    """The local executor, adding up the seconds its jobs ran."""

    job_seconds = 0.0

    def run(self, job, slot):
        result = super().run(job, slot)
        self.job_seconds += result.seconds
        return result


def make_target(root: Path) -> Target:
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "autoresearch.toml").write_text(CONFIG)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "toy"]):
        subprocess.run(["git", "-C", str(root), *args], check=True)
    return Target.open(root)


def measure(agent_name: str, options: dict, experiments: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        target = make_target(Path(tmp) / "toy")
        executor = TimedExecutor()
        with assemble.opened(target, assemble.agent(target, agent_name, options), agent_name, executor, tag="bench",
                             budget=Budget.parse("10steps"), say=lambda line: None) as session:
            scheduler.run(session, 0)  # the baseline, outside the measurement
            executor.job_seconds = 0.0
            start = time.perf_counter()
            scheduler.run(session, experiments)
            wall = time.perf_counter() - start
        overhead = (wall - executor.job_seconds) / experiments
        return {"agent": agent_name, "experiments": experiments, "wall_s": round(wall, 3),
                "in_commands_s": round(executor.job_seconds, 3),
                "overhead_per_experiment_s": round(overhead, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=30)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as script:
        json.dump([{"description": f"set X to {1 + i / 10}", "knobs": {"X": 1 + i / 10}}
                   for i in range(1, args.experiments + 1)], script)
    print(f"python {sys.version.split()[0]}, {args.experiments} experiments per agent, toy target")
    for agent_name, options in (("scripted", {"script": script.name}), ("search", {})):
        result = measure(agent_name, options, args.experiments)
        print(f"{agent_name:>9}: harness overhead {result['overhead_per_experiment_s'] * 1000:.0f} ms per experiment "
              f"(wall {result['wall_s']:.2f} s, of which {result['in_commands_s']:.2f} s inside the target's commands)")
    Path(script.name).unlink()


if __name__ == "__main__":
    main()
