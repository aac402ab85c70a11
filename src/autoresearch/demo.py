"""`autoresearch demo`: the whole loop, offline, on the built-in GPT target, in about five minutes on 2 CPU cores.

init + prepare + run with the offline search agent (4 experiments of 120 steps, about 10 s each on 2 CPU
cores, set in cli.py: a budget in steps, so that a busy machine makes the demo slower, never noisier), the
held-out test of the best against the baseline, then what happened, the report, and how to open it and
the dashboard. So that a handful of experiments can show the loop finding a real improvement, the demo
starts from a deliberately untuned point (`UNTUNED`, committed as its own change); the target's own
defaults stay tuned. The search moves one or two knobs per experiment, so each kept change is one idea.
Running the demo again in the same directory continues its research.
"""

from __future__ import annotations

import re

from pathlib import Path
from typing import Optional

from . import knobs
from .budget import Budget
from .config import CONFIG_FILE
from .target import Target, init

TAG = "demo"
UNTUNED = {"MATRIX_LR": 0.002}  # 20x below the tuned default: the search has something real to find
# Fewer runs, so the demo takes minutes. The untuned start makes the first real gain large, many times the noise:
# the judge would treat it as an implausible jump and spend 9 more runs confirming it (seeds and the test split),
# so the demo raises that bound and relies on the held-out test of the best at the session's end instead.
QUICK_JUDGE = {"calibrate_seeds": 3, "max_runs": 3, "final_test_seeds": 2, "implausible": 1000}



def demo(directory: Path, experiments: int, budget: Budget, data: Optional[str]) -> int:
    from .cli import prepare, run_session
    from .ledger import Ledger
    from .status import render, status_dict

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
    code = run_session(target, "search", {}, experiments, budget, TAG, None)
    if code != 0:
        return code
    from .report import build

    ledger = Ledger(target.ledger_path)
    status = status_dict(ledger, TAG, target.config)
    print()
    print(render(status))
    _, page = build(target, ledger, TAG, target.state / "report")
    here, command = _shown(directory), _command()
    print()
    print(f"Every experiment is in {_shown(target.ledger_path)}; the kept chain is the branch {status['branch']}:")
    print(f"  git -C {here} log --oneline {status['branch']}")
    print(f"The report (progress chart, every experiment and its diff): open {page.resolve().as_uri()}")
    print(f"The live dashboard: {command} serve -C {here}   (then http://127.0.0.1:8765)")
    print(f"More: {command} status -C {here}    {command} run -C {here} --experiments 5   (continues the research)")
    return 0


def _shown(path: Path) -> str:
    """`path` relative to the current directory where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _command() -> str:
    """How to run autoresearch from this shell: the script beside this interpreter (a virtual environment that
    is not active), else `autoresearch` on PATH."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "autoresearch"
    if beside.exists() and shutil.which("autoresearch") != str(beside):
        return _shown(beside)
    return "autoresearch"


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
        text, found = re.subn(rf"^{key} = [\d.]+", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        if not found:
            text = text.replace("[judge]\n", f"[judge]\n{key} = {value}\n", 1)
    config.write_text(text)
    Git(directory).commit_all(f"demo: start from an untuned point ({', '.join(changes)}); a quicker judge")
