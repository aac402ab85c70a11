"""`autoresearch demo`: the whole loop, offline, on the built-in GPT target, in a few minutes on a CPU.

init + prepare + run with the offline search agent, then what happened. So that a handful of
experiments can show the loop finding a real improvement, the demo starts from a deliberately
untuned point (`UNTUNED`, committed as its own change); the target's own defaults stay tuned.
Running the demo again in the same directory continues its research.
"""

from __future__ import annotations

import re

from pathlib import Path
from typing import Optional

from . import knobs
from .budget import Budget
from .config import CONFIG_FILE
from .target import Target, init, prepare

TAG = "demo"
UNTUNED = {"MATRIX_LR": 0.002}  # 20x below the tuned default: the search has something real to find
QUICK_JUDGE = {"calibrate_seeds": 3, "max_runs": 3, "final_test_seeds": 2}  # fewer runs, so the demo takes minutes


def demo(directory: Path, experiments: int, budget: Budget, data: Optional[str]) -> int:
    from . import assemble, observe
    from .status import render

    if (directory / CONFIG_FILE).exists():
        print(f"continuing the demo in {directory}")
    else:
        init(directory, "gpt")
        _untune(directory)
        print(f"created {directory}: the built-in gpt target, started from an untuned point "
              f"({', '.join(f'{k} = {v}' for k, v in UNTUNED.items())})")
    target = Target.open(directory)
    if prepare(target, data) != 0:
        if data in (None, "shakespeare"):
            print("could not fetch the Shakespeare corpus; the demo goes on with the stdlib corpus (no download)")
            if prepare(target, "stdlib") != 0:
                return 1
        else:
            return 1
    reason = assemble.run(target, "search", experiments=experiments, budget=budget, tag=TAG)
    print(f"session ended: {reason}")
    if reason.startswith("paused"):
        return 1
    ledger = observe.open_ledger(target)
    try:
        status = observe.status(ledger, TAG, target)
    finally:
        ledger.close()
    print()
    print(render(status))
    print()
    print(f"Every experiment is in {target.ledger_path}; the kept chain is the branch {status['branch']}:")
    print(f"  git -C {directory} log --oneline {status['branch']}")
    print(f"  autoresearch status -C {directory}      autoresearch export -C {directory} --tsv results.tsv")
    return 0


def _untune(directory: Path) -> None:
    from .gitrepo import Git

    path = directory / "train.py"
    source = path.read_text()
    changes = []
    for name, value in UNTUNED.items():
        changes.append(f"{name} {knobs.format_value(knobs.read(source, name))} -> {knobs.format_value(value)}")
        source = knobs.set_value(source, name, value)
    path.write_text(source)
    config = directory / CONFIG_FILE
    text = config.read_text()
    for key, value in QUICK_JUDGE.items():
        text = re.sub(rf"^{key} = \d+", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
    config.write_text(text)
    Git(directory).commit_all(f"demo: start from an untuned point ({', '.join(changes)}); a quicker judge")
