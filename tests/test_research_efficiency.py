"""benchmarks/research_efficiency.py compares methods at equal compute: every training run a method makes counts,
and none is made past the limit. Here its two kinds of search run on the guarded toy (a trusted evaluator, data
splits, seeded noise), the loop's with the statistical judge, whose baseline calibration and confirmation of an
implausible jump on the test split are runs too."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from autoresearch.budget import Budget
from autoresearch.ledger import Ledger

from toy import GUARDED_CONFIG, build_guarded
from transfer_toy import KNOB

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import research_efficiency as bench  # noqa: E402

KNOBS = KNOB + """
[[knobs]]
name = "WIDTH"
file = "train.py"
type = "int"
low = 1
high = 16
"""


def knobbed(tmp_path: Path, **options):
    """The guarded toy with two [[knobs]], committed."""
    toy = build_guarded(tmp_path, config=GUARDED_CONFIG + KNOBS, **options)
    toy.git("add", "-A")
    toy.git("commit", "-q", "-m", "knobs")
    return toy


def trained(root: Path) -> int:
    """Runs that trained, counted from what they left on disk (each writes its log), not from the ledger."""
    return sum(1 for _ in root.rglob("log.txt"))


def test_the_loop_stops_at_its_runs_and_counts_calibration_and_confirmation(tmp_path):
    toy = knobbed(tmp_path, noise=0.01)
    unit = tmp_path / "unit"
    outcome = bench.loop_search(toy.root, unit, "stat", 0, 9, Budget.parse("1s"), lambda message: None)
    assert trained(unit) == 9 == outcome["runs"]
    ledger = Ledger(unit / ".autoresearch" / "ledger.sqlite")
    try:
        (checks,) = ledger.db.execute("SELECT COUNT(*) FROM verification_runs WHERE reason != ?",
                                      (bench.SPENT,)).fetchone()
    finally:
        ledger.close()
    assert checks > 0  # LR 1 -> 3 on a noise of 0.01 is implausible: its confirmation on the test split ran
    again = bench.loop_search(toy.root, unit, "stat", 0, 9, Budget.parse("1s"), lambda message: None)
    assert trained(unit) == 9 == again["runs"]  # a resumed collection trains nothing more


def test_optuna_makes_exactly_its_trials(tmp_path):
    toy = knobbed(tmp_path)
    results = bench.Results(tmp_path / "results.jsonl")
    where = {"start": "tuned", "method": "tpe", "rep": 0, "runs_cap": 5, "budget": "1s"}
    outcome = bench.optuna_search(toy.root, tmp_path / "unit", "tpe", 0, 5, Budget.parse("1s"), results, where,
                                  lambda message: None)
    assert outcome["runs"] == 5 == len(results.find(kind="trial")) == trained(tmp_path / "unit")
    assert outcome["trajectory"][0][3] == bench.key({"LR": 1.0, "WIDTH": 4})  # the start is the first trial


def test_a_variant_of_the_loop_changes_its_judge_and_nothing_else(tmp_path):
    toy = knobbed(tmp_path, noise=0.01)
    unit = tmp_path / "unit"
    outcome = bench.loop_search(toy.root, unit, "stat4", 0, 6, Budget.parse("1s"), lambda message: None)
    assert trained(unit) == 6 == outcome["runs"]
    config = (unit / "autoresearch.toml").read_text()
    assert config.replace("calibrate_seeds = 4", "calibrate_seeds = 2") == (toy.root / "autoresearch.toml").read_text()
    ledger = Ledger(unit / ".autoresearch" / "ledger.sqlite")
    try:
        (calibration,) = ledger.db.execute("SELECT COUNT(*) FROM runs r JOIN experiments e ON e.id = r.experiment_id "
                                           "WHERE e.idx = 0").fetchone()
    finally:
        ledger.close()
    assert calibration == 4  # the baseline calibrated on the variant's 4 seeds, not the toy's 2


def test_a_search_stopped_before_its_runs_records_nothing_and_resumes(tmp_path, monkeypatch):
    # Ctrl-C ends the session quietly (scheduler.run returns, the experiment interrupted): the search must not then
    # be reported as if its compute had been spent. Here the session returns after none of its runs.
    toy = knobbed(tmp_path, noise=0.01)
    unit = tmp_path / "unit"
    with monkeypatch.context() as patched, pytest.raises(SystemExit, match="unit stopped after 0 of its 6 runs; "
                                                                         "nothing recorded"):
        patched.setattr(bench.scheduler, "run", lambda *args, **kwargs: None)
        bench.loop_search(toy.root, unit, "stat", 0, 6, Budget.parse("1s"), lambda message: None)
    outcome = bench.loop_search(toy.root, unit, "stat", 0, 6, Budget.parse("1s"), lambda message: None)
    assert trained(unit) == 6 == outcome["runs"]


def test_the_wide_variant_moves_every_knob_tpe_moves_and_restores_the_agent(tmp_path):
    from autoresearch.agents import search

    toy = knobbed(tmp_path, noise=0.01)
    outcome = bench.loop_search(toy.root, tmp_path / "unit", "wide", 0, 8, Budget.parse("1s"), lambda message: None)
    moves = [description for _, _, _, description in outcome["trajectory"][1:]]
    assert moves and all("LR " in move and "WIDTH " in move for move in moves), moves  # as shipped, some move one
    assert (search.MAX_MOVED, search.SECOND_MOVE) == (2, 0.8)  # the next search in the process moves as shipped
