"""[[constraints]]: a change that breaks a bound on another reported number is discarded, with the reason."""

import json

import pytest

from autoresearch.config import ConfigError, load
from toy import CONFIG, TRAIN

# the toy, also reporting a "memory" that grows with WIDTH and a "speed" that falls with it
TRAIN_MEASURED = TRAIN.replace('print(f"score:', 'print(f"memory: {{WIDTH * 100}}")\nprint(f"speed: {{100 / WIDTH}}")\n'
                                                 'print(f"score:')


def toy_with(make_toy, constraints: str):
    return make_toy(train=TRAIN_MEASURED, config=CONFIG + constraints)


def run(cli, toy, steps):
    result = cli("run", "-C", toy.root, "--tag", "t", *toy.scripted(steps), "--experiments", len(steps))
    assert result.code == 0, result.text
    data = json.loads(cli("status", "-C", toy.root, "--json").out)
    return data, data["experiments"][1:]


def test_an_absolute_bound_discards_a_better_score_with_the_reason(make_toy, cli):
    toy = toy_with(make_toy, '\n[[constraints]]\nmetric = "memory"\nmax = 700\n')
    data, (wide, lr) = run(cli, toy, [{"description": "widen to 8", "knobs": {"WIDTH": 8}},
                                      {"description": "raise LR", "knobs": {"LR": 2.0}}])
    assert wide["metric"] < data["baseline"]["metric"]  # the better score ...
    assert wide["state"] == "discarded"  # ... breaks the bound
    assert wide["reason"] == "constraint memory <= 700 broken: memory 800 above 700"
    assert lr["state"] == "kept" and data["best"]["id"] == 2
    assert any(f["index"] == 1 and f["kind"] == "constraint" for f in data["flags"])


def test_a_ratio_is_taken_against_the_baseline(make_toy, cli):
    toy = toy_with(make_toy, '\n[[constraints]]\nmetric = "speed"\nmin_ratio = 0.9\n')
    data, (slower, faster) = run(cli, toy, [{"description": "widen to 5", "knobs": {"WIDTH": 5}},
                                            {"description": "narrow to 3", "knobs": {"WIDTH": 3}}])
    assert slower["state"] == "discarded" and "speed >= 0.9x the baseline's (25)" in slower["reason"]
    assert "speed 20 below 22.5" in slower["reason"]
    assert faster["state"] == "discarded" and not faster["reason"].startswith("constraint")  # a worse score


def test_a_change_that_stops_reporting_the_number_breaks_its_constraint(make_toy, cli):
    toy = toy_with(make_toy, '\n[[constraints]]\nmetric = "memory"\nmax = 700\n')
    quiet = {"description": "stop reporting memory, better LR", "replace": [
        {"file": "train.py", "old": 'print(f"memory: {WIDTH * 100}")\n', "new": ""},
        {"file": "train.py", "old": "LR = 1.0", "new": "LR = 2.0"}]}
    _, (experiment,) = run(cli, toy, [quiet])
    assert experiment["state"] == "discarded" and "the runs report no memory" in experiment["reason"]


def test_the_harness_clock_is_a_number_every_run_has(make_toy, cli):
    toy = toy_with(make_toy, '\n[[constraints]]\nmetric = "run_seconds"\nmax = 0.000001\n')
    _, (experiment,) = run(cli, toy, [{"description": "raise LR", "knobs": {"LR": 2.0}}])
    assert experiment["state"] == "discarded" and experiment["reason"].startswith("constraint run_seconds <= 1e-06")


def test_status_shows_the_constraints_and_the_baseline_values(make_toy, cli):
    toy = toy_with(make_toy, '\n[[constraints]]\nmetric = "memory"\nmax_ratio = 1.5\nmax = 1000\n')
    run(cli, toy, [{"description": "widen to 8", "knobs": {"WIDTH": 8}}])
    text = cli("status", "-C", toy.root).out
    assert "constraints: memory <= 1000 and <= 1.5x the baseline's (400)" in text
    assert "constraint memory" in text  # the discarded change's flag


@pytest.mark.parametrize("table, message", [
    ('metric = "memory"\n', "constraints.0: a constraint needs a bound"),
    ('metric = "memory"\nmax_ratio = 0\n', "constraints.0.max_ratio"),
    ('max = 3\n', "constraints.0.metric: required key is missing"),
])
def test_a_bad_constraint_names_its_key(tmp_path, table, message):
    (tmp_path / "autoresearch.toml").write_text(CONFIG + "\n[[constraints]]\n" + table)
    with pytest.raises(ConfigError, match=message):
        load(tmp_path)


def test_a_ratio_compares_runs_at_one_budget():
    """A line resumed at twice its budget: each run takes twice as long, and its run_seconds is held against the
    baseline's at that budget, not a mean over both (which discarded every change); at a budget the baseline never
    ran at, the ratio is not checked."""
    from autoresearch import constraints
    from autoresearch.config import Constraint
    from autoresearch.records import Experiment, RunRecord, RunState, State

    def runs(budget, *seconds):
        return tuple(RunRecord(experiment_id=1, seed=s, state=RunState.OK, metric=1.0, seconds=t, budget=budget)
                     for s, t in enumerate(seconds))

    baseline = Experiment(id=1, tag="t", index=0, state=State.BASELINE, parent=None, commit="c", description="",
                          agent="harness", metric=1.0, runs=runs("60s", 10, 10) + runs("120s", 20, 20))
    slower = [Constraint(metric="run_seconds", max_ratio=1.25)]
    assert constraints.broken(slower, list(runs("120s", 24)), baseline) is None
    assert "run_seconds 26 above 25" in constraints.broken(slower, list(runs("120s", 26)), baseline)
    assert "run_seconds 13 above 12.5" in constraints.broken(slower, list(runs("60s", 13)), baseline)
    assert constraints.broken(slower, list(runs("240s", 99)), baseline) is None
    assert constraints.reference(baseline, "run_seconds") == 10  # what status shows: at the baseline's budget
