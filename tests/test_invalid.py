"""Invalid proposals are rejected before anything runs; failed runs are recorded with their log."""

import pytest

from autoresearch.records import RunState, State
from toy import TAG, TRAIN, build_toy, run_cli

GOOD = {"description": "raise LR to 2", "knobs": {"LR": 2.0}}

# (case, proposal, what the reason says)
INVALID = [
    ("edit protected", {"description": "tune the scorer", "write": {"scorer.py": "PENALTY = -100.0\n"}},
     "edits protected file scorer.py"),
    ("delete protected", {"description": "drop the scorer", "delete": ["scorer.py"]},
     "deletes protected file scorer.py"),
    ("edit program", {"description": "rewrite the brief", "write": {"program.md": "Anything goes.\n"}},
     "edits protected file program.md"),
    ("new file outside editable", {"description": "take notes", "write": {"notes.txt": "hello\n"}},
     "notes.txt is outside the editable files (train.py, lib/*.py)"),
    ("edit config", {"description": "loosen the rules",
                     "write": {"autoresearch.toml": '[commands]\ntrain = "python train.py"\n'}},
     "edits protected file autoresearch.toml"),
    ("syntax error", {"description": "broken edit", "replace": [{"file": "train.py", "old": "LR = 1.0",
                                                                 "new": "LR = = 1.0"}]},
     "train.py does not parse: invalid syntax (line 5)"),
    ("syntax error in a new editable file", {"description": "helper", "write": {"lib/util.py": "def (:\n"}},
     "lib/util.py does not parse"),
    ("empty", {"description": "nothing at all"}, "empty: the proposal changes nothing"),
    ("rewrite to the same text", {"description": "same again", "knobs": {"LR": 1.0}},
     "empty: the proposal changes nothing"),
    ("replace without a match", {"description": "stale edit", "replace": [{"file": "train.py", "old": "LR = 7.0",
                                                                           "new": "LR = 2.0"}]},
     "malformed proposal: replace in train.py: the old text occurs 0 times, not once"),
    ("agent error", {"description": "agent fails", "error": "model returned garbage"},
     "model returned garbage"),
    ("path escape", {"description": "escape", "write": {"../outside.py": "x = 1\n"}},
     "'../outside.py' is not a path inside the target"),
    ("absolute path", {"description": "escape", "write": {"/tmp/autoresearch-test-outside.py": "x = 1\n"}},
     "is not a path inside the target"),
    ("into .git", {"description": "hook", "write": {".git/hooks/pre-commit": "#!/bin/sh\n"}},
     "is not a path inside the target"),
]


def run(cli, toy, steps, *extra):
    result = cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), *extra)
    assert result.code == 0, result.text
    return toy.experiments()


@pytest.fixture(scope="module")
def rejected(tmp_path_factory):
    """One session through every invalid proposal (and nothing else): the toy and its experiments."""
    toy = build_toy(tmp_path_factory.mktemp("invalid"))
    experiments = run(run_cli, toy, [proposal for _, proposal, _ in INVALID])
    assert len(experiments) == 1 + len(INVALID)
    return toy, dict(zip((case for case, _, _ in INVALID), experiments[1:]))


@pytest.mark.parametrize("case, proposal, reason", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_proposal_is_rejected_with_its_reason(rejected, case, proposal, reason):
    experiment = rejected[1][case]
    assert experiment.state is State.REJECTED
    assert reason in experiment.reason


@pytest.mark.parametrize("case", [case[0] for case in INVALID])
def test_invalid_proposal_runs_nothing(rejected, case):
    toy, experiments = rejected
    experiment = experiments[case]
    assert (experiment.commit, experiment.runs, experiment.metric, experiment.seconds) == (None, (), None, None)
    assert not (toy.root / ".autoresearch" / "runs" / TAG / f"{experiment.index:05d}").exists()
    assert toy.resolve(f"refs/autoresearch/{TAG}/{experiment.index}") is None


def test_rejections_leave_the_branch_and_the_checkout_alone(rejected):
    toy, experiments = rejected
    baseline = toy.experiments()[0]
    assert toy.branch() == baseline.commit
    assert all(e.parent == baseline.commit for e in experiments.values())
    assert len(toy.pids()) == len(baseline.runs)  # the baseline's runs only
    assert toy.git("status", "--porcelain") == ""
    assert toy.git("log", "--format=%s", "main") == "toy target"


def test_nothing_is_written_outside_the_worktree(toy, cli, tmp_path):
    run(cli, toy, [{"description": "escape", "write": {"train.py": "x = 1\n", "../outside.py": "x = 1\n",
                                                         "../../../escaped.py": "x = 1\n"}}])
    assert not (toy.root / ".autoresearch" / "worktrees" / "outside.py").exists()
    assert not (toy.root / "escaped.py").exists() and not (tmp_path / "escaped.py").exists()


def test_a_rejected_proposal_keeps_its_diff(toy, cli):
    _, rejected = run(cli, toy, [INVALID[0][1]])
    assert "+PENALTY = -100.0" in rejected.diff


def test_the_loop_goes_on_after_every_kind_of_rejection(toy, cli):
    experiments = run(cli, toy, [proposal for _, proposal, _ in INVALID] + [GOOD])
    assert [e.state for e in experiments] == [State.BASELINE] + [State.REJECTED] * len(INVALID) + [State.KEPT]
    assert experiments[-1].parent == experiments[0].commit
    assert toy.branch() == experiments[-1].commit


def test_the_next_proposal_starts_from_a_clean_worktree(toy, cli):
    # the first writes a stray file then fails; the second must not see (or commit) it
    steps = [{"description": "stray", "write": {"lib/stray.py": "x = 1\n", "notes.txt": "x\n"}}, GOOD]
    _, _, good = run(cli, toy, steps)
    assert good.state is State.KEPT
    assert toy.git("show", "--name-only", "--format=", good.commit) == "train.py"


def test_agent_errors_in_a_row_pause_the_session(toy, cli):
    # a knob the config does not declare makes the scripted agent itself fail (not a malformed proposal)
    broken = {"description": "unknown knob", "knobs": {"DEPTH": 3}}
    result = cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([broken] * 6 + [GOOD]))
    assert result.code == 1
    assert "paused: the agent failed 5 times in a row" in result.out
    experiments = toy.experiments()
    assert len(experiments) == 6
    assert all(e.reason.startswith("agent error") for e in experiments[1:])


# ---------------------------------------------------------------- failed runs

FAILED_RUNS = [
    ("non-zero exit", 'print("about to fail")\nraise SystemExit(3)\n', "seed 0: train exited with code 3"),
    ("exception", 'raise RuntimeError("out of memory, about to fail")\n', "seed 0: train exited with code 1"),
    ("NaN metric", 'print("about to fail")\nprint("score: nan")\nraise SystemExit(0)\n', "seed 0: score is nan"),
    ("infinite metric", 'print("about to fail")\nprint("score: inf")\nraise SystemExit(0)\n', "seed 0: score is inf"),
    ("no metric line", 'print("about to fail")\nraise SystemExit(0)\n',
     "seed 0: no 'score: <number>' line in the output"),
]


@pytest.mark.parametrize("case, code, reason", FAILED_RUNS, ids=[case[0] for case in FAILED_RUNS])
def test_failed_run_is_crashed_with_its_log_tail(toy, cli, case, code, reason):
    proposal = {"description": case, "replace": [{"file": "train.py", "old": "time.sleep(SLEEP)\n", "new": code}]}
    _, crashed = run(cli, toy, [proposal])
    assert crashed.state is State.CRASHED
    assert crashed.reason == reason
    assert crashed.metric is None
    (run_record,) = crashed.runs
    assert run_record.state is RunState.CRASHED
    assert "about to fail" in run_record.log_tail
    assert toy.branch() == toy.experiments()[0].commit


def test_a_failed_baseline_ends_the_session_with_exit_1(make_toy, cli):
    toy = make_toy(train=TRAIN.replace("time.sleep(SLEEP)\n", "raise SystemExit(3)\n"))
    result = cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([GOOD]))
    assert result.code == 1
    assert "the baseline failed (seed 0: train exited with code 3)" in result.err
    assert [e.state for e in toy.experiments()] == [State.CRASHED]
