"""A toy tag holding every experiment state, made by the real loop, for the views' tests.

The toy (toy.py) here runs three seeds, and its score moves a little with the seed, so that the
views have a spread to show: seed 0, 1, 2 add -0.03, -0.01, +0.01. Experiments, in order:

    #0 baseline 5.39   #1 kept 2.39   #2 discarded 3.64   #3 crashed   #4 timeout   #5 rejected (protected file)
    #6 rejected (malformed)   #7 kept 1.99   #8 interrupted (a session killed while it ran; written through
    the ledger's API)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autoresearch import observe
from autoresearch.records import State
from autoresearch.target import Target
from toy import CONFIG, TAG, TRAIN, Toy, build_toy, run_cli

NOISY_TRAIN = TRAIN.replace(
    'print(f"score: {{(LR - 3.0) ** 2 + abs(WIDTH - 8) / 10 + 1 / budget}}")',
    'seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))\n'
    'for step in range(1, 4):\n'
    '    print(f"step {{step:5d}} | {{100 * step / 4:5.1f}}% | loss {{3.0 / step:.4f}} | lr x1.00 | 12,345 tok/s")\n'
    'print(f"score: {{(LR - 3.0) ** 2 + abs(WIDTH - 8) / 10 + 1 / budget + 0.01 * ((seed * 37) % 7 - 3)}}")')
assert NOISY_TRAIN != TRAIN
LIMIT = 2
NOISY_CONFIG = CONFIG.replace('default = "1s"', f'default = "1s"\ntimeout = {LIMIT}') + "\n[run]\nseeds = [0, 1, 2]\n"

SCRIPT = [
    {"description": "raise LR to 2", "knobs": {"LR": 2.0}},
    {"description": "LR 1.5 instead", "knobs": {"LR": 1.5}},
    {"description": "exit early", "replace": [{"file": "train.py", "old": "time.sleep(SLEEP)\n",
                                              "new": "raise SystemExit(3)\n"}]},
    {"description": "ignore the budget", "replace": [{"file": "train.py", "old": "HANG = 0", "new": "HANG = 1"}]},
    {"description": "tune the scorer", "write": {"scorer.py": "PENALTY = -100.0\n"}},
    {"description": "garbage", "error": "model returned garbage"},
    {"description": "widen to 8 <b>&amp;</b>", "knobs": {"WIDTH": 8}},
]
STATES = ["baseline", "kept", "discarded", "crashed", "timeout", "rejected", "rejected", "kept", "interrupted"]


def build_researched(directory: Path) -> Toy:
    toy = build_toy(directory, train=NOISY_TRAIN, config=NOISY_CONFIG)
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(SCRIPT))
    assert result.code == 0, result.text
    ledger = toy.ledger()
    try:  # a session killed while #8 ran: what the next session records as interrupted
        best = ledger.best(TAG)
        ledger.add_experiment(tag=TAG, session_id=None, state=State.RUNNING, parent=best.commit, commit=best.commit,
                              description="killed mid-run", agent="scripted")
        ledger.interrupt_unfinished(TAG, "the harness stopped while it ran")
        assert [e.state.value for e in ledger.experiments(TAG)] == STATES
    finally:
        ledger.close()
    return toy


def with_one_in_flight(toy: Toy, directory: Path, log_text: str, description: str = "in flight"):
    """A copy of the research in `directory` with #9 running on seed 0: its ledger row and its log, as a session
    leaves them. Returns (target, ledger, experiment, log path); the caller closes the ledger."""
    shutil.copytree(toy.root, directory)
    target = Target.open(directory)
    ledger = observe.open_ledger(target)
    best = ledger.best(TAG)
    experiment = ledger.add_experiment(tag=TAG, session_id=None, state=State.RUNNING, parent=best.commit,
                                       commit=best.commit, description=description, agent="scripted")
    log = observe.run_dir(target, TAG, experiment.index) / "seed0" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text(log_text)
    return target, ledger, experiment, log
