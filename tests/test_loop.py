"""The loop end to end on the toy target: run, status, export and resume, with real git and SQLite."""

import json
import os
import re

import pytest

from autoresearch.records import State
from toy import CONFIG, TAG, TRAIN, build_toy, run_cli

LR_2 = {"description": "raise LR to 2", "knobs": {"LR": 2.0}}            # 2.4: kept
LR_1_5 = {"description": "LR 1.5 instead", "knobs": {"LR": 1.5}}         # 3.65: discarded
WIDTH_8 = {"description": "widen to 8", "knobs": {"WIDTH": 8}}           # 2.0: kept
CRASH = {"description": "exit early", "replace": [{"file": "train.py", "old": "time.sleep(SLEEP)\n",
                                                   "new": "raise SystemExit(3)\n"}]}
PROTECTED = {"description": "tune the scorer", "write": {"scorer.py": "PENALTY = -100.0\n"}}
SCRIPT = [LR_2, LR_1_5, WIDTH_8, CRASH]


def run(cli, toy, steps, *extra):
    return cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), *extra)


def status(cli, toy):
    result = cli("status", "-C", toy.root, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)


@pytest.fixture(scope="module")
def researched(tmp_path_factory):
    """The toy after a baseline and the four scripted experiments: kept, discarded, kept, crashed.

    Shared by the tests of this module, which only read it."""
    toy = build_toy(tmp_path_factory.mktemp("researched"))
    result = run(run_cli, toy, SCRIPT, "--experiments", "4")
    assert result.code == 0, result.text
    return toy


def test_baseline_then_experiments_with_their_outcomes(researched):
    experiments = researched.experiments()
    assert [(e.index, e.state) for e in experiments] == [
        (0, State.BASELINE), (1, State.KEPT), (2, State.DISCARDED), (3, State.KEPT), (4, State.CRASHED)]
    assert [e.metric for e in experiments] == [pytest.approx(m) for m in (5.4, 2.4, 3.65, 2.0)] + [None]


def test_experiments_zero_runs_only_the_baseline(toy, cli):
    result = run(cli, toy, SCRIPT, "--experiments", "0")
    assert result.code == 0, result.text
    assert [(e.state, e.description, e.agent) for e in toy.experiments()] == [(State.BASELINE, "baseline", "harness")]
    assert toy.branch() == toy.resolve("main")


def test_status_json_has_best_baseline_and_every_experiment(researched, cli):
    data = status(cli, researched)
    assert data["tag"] == TAG and data["branch"] == f"autoresearch/{TAG}"
    assert (data["baseline"]["id"], data["baseline"]["metric"]) == (0, 5.4)
    assert (data["best"]["id"], data["best"]["metric"]) == (3, 2.0)
    assert [e["id"] for e in data["experiments"]] == [0, 1, 2, 3, 4]
    for entry in data["experiments"]:
        assert {"id", "state", "metric", "commit", "parent", "description", "seconds"} <= entry.keys()
        assert entry["seconds"] > 0
    assert [e["state"] for e in data["experiments"]] == ["baseline", "kept", "discarded", "kept", "crashed"]
    assert data["kept_chain"] == [0, 1, 3]


def test_status_text_shows_baseline_best_and_latest(researched, cli):
    result = cli("status", "-C", researched.root)
    assert result.code == 0
    assert "baseline  score 5.400000" in result.out
    assert "best      score 2.000000" in result.out
    assert "exited with code 3" in result.out


def test_status_before_any_research(toy, cli):
    assert json.loads(cli("status", "-C", toy.root, "--json").out)["experiments"] == []


def test_branch_points_at_the_best_commit(researched, cli):
    assert researched.branch() == status(cli, researched)["best"]["commit"]


def test_branch_holds_the_kept_changes_only(researched):
    train = researched.git("show", f"autoresearch/{TAG}:train.py")
    assert "LR = 2.0" in train and "WIDTH = 8" in train and "raise SystemExit" not in train


def test_every_experiment_with_a_commit_has_a_ref(researched):
    committed = [e for e in researched.experiments() if e.commit]
    assert len(committed) == 5
    for experiment in committed:
        assert researched.resolve(f"refs/autoresearch/{TAG}/{experiment.index}") == experiment.commit


def test_each_commit_sits_on_the_best_commit_of_its_time(researched):
    baseline, lr_2, lr_1_5, width_8, crash = researched.experiments()
    assert (lr_2.parent, lr_1_5.parent, width_8.parent, crash.parent) == \
           (baseline.commit, lr_2.commit, lr_2.commit, width_8.commit)
    for experiment in (lr_2, lr_1_5, width_8, crash):
        assert researched.resolve(f"{experiment.commit}^") == experiment.parent


def test_discarded_experiment_keeps_its_diff_in_the_ledger(researched):
    discarded = researched.experiments()[2]
    assert discarded.state is State.DISCARDED
    assert "-LR = 2.0" in discarded.diff and "+LR = 1.5" in discarded.diff
    assert (discarded.lines_added, discarded.lines_removed) == (1, 1)
    assert discarded.knobs == {"LR": 1.5, "WIDTH": 4}


def test_discarded_commit_is_off_the_branch_but_kept_by_its_ref(researched):
    discarded = researched.experiments()[2]
    assert discarded.commit not in researched.git("rev-list", f"autoresearch/{TAG}").split()
    assert researched.resolve(f"refs/autoresearch/{TAG}/2") == discarded.commit


def test_crash_keeps_the_log_tail(researched):
    crash = researched.experiments()[4]
    assert crash.reason == "seed 0: train exited with code 3"
    assert "==> python train.py" in crash.runs[0].log_tail


def test_the_users_checkout_is_untouched(researched):
    assert researched.git("rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert researched.git("log", "--format=%s", "main") == "toy target"
    assert researched.git("status", "--porcelain") == ""
    assert "LR = 1.0" in (researched.root / "train.py").read_text()


def test_resume_continues_the_indexes_and_the_script(toy, cli):
    steps = [LR_2, LR_1_5, WIDTH_8, PROTECTED]
    assert run(cli, toy, steps, "--experiments", "2").code == 0
    assert run(cli, toy, steps, "--experiments", "2").code == 0
    experiments = toy.experiments()
    assert [e.index for e in experiments] == [0, 1, 2, 3, 4]
    assert [e.description for e in experiments] == ["baseline", *(s["description"] for s in steps)]
    assert sorted({e.session_id for e in experiments}) == [1, 2]


def test_run_without_a_count_stops_when_the_script_is_done(toy, cli):
    result = run(cli, toy, [LR_2, LR_1_5])
    assert result.code == 0
    assert "session ended: the agent has no more proposals" in result.out
    assert len(toy.experiments()) == 3
    assert toy.sessions()[0]["end_reason"].startswith("the agent has no more proposals")


def test_a_finished_script_resumes_to_nothing(toy, cli):
    run(cli, toy, [LR_2])
    result = run(cli, toy, [LR_2])
    assert result.code == 0
    assert len(toy.experiments()) == 2


def test_export_tsv_writes_karpathys_format(toy, cli, tmp_path):
    run(cli, toy, [*SCRIPT, PROTECTED])
    out = tmp_path / "results.tsv"
    result = cli("export", "-C", toy.root, "--tsv", out)
    assert result.code == 0, result.err
    header, *rows = out.read_text().splitlines()
    assert header == "commit\tscore\tmemory_gb\tstatus\tdescription"
    cells = [row.split("\t") for row in rows]
    assert all(len(row) == 5 for row in cells)
    assert [row[3] for row in cells] == ["keep", "keep", "discard", "keep", "crash", "crash"]
    assert [row[1] for row in cells[:4]] == ["5.400000", "2.400000", "3.650000", "2.000000"]
    experiments = toy.experiments()
    assert [row[0] for row in cells] == [e.commit[:7] for e in experiments[:5]] + ["-------"]
    assert cells[4][4] == "exit early [crashed: seed 0: train exited with code 3]"
    assert cells[5][4] == "tune the scorer [rejected: edits protected file scorer.py]"


def test_export_with_no_research_is_an_error(toy, cli, tmp_path):
    assert cli("export", "-C", toy.root, "--tsv", tmp_path / "r.tsv").code == 2


def test_budget_flag_reaches_the_run(toy, cli):
    assert run(cli, toy, [], "--experiments", "0", "--budget", "4s").code == 0
    (baseline,) = toy.experiments()
    assert baseline.metric == pytest.approx(4 + 0.4 + 1 / 4)
    assert toy.sessions()[0]["budget"] == "4s"


def test_the_plain_rule_runs_every_seed(make_toy, cli):
    toy = make_toy(config=CONFIG + "\n[run]\nseeds = [0, 1, 2]\n")
    assert run(cli, toy, [LR_2], "--experiments", "1").code == 0
    assert [[r.seed for r in e.runs] for e in toy.experiments()] == [[0, 1, 2], [0, 1, 2]]


def test_a_metric_that_ignores_the_seed_stops_calibrating_after_two_runs_then_one_run_decides(make_toy, cli):
    toy = make_toy(config=CONFIG.replace('rule = "plain"', "calibrate_seeds = 8"))
    result = run(cli, toy, [LR_2], "--experiments", "1")
    assert result.code == 0, result.text
    baseline, kept = toy.experiments()
    assert [r.seed for r in baseline.runs] == [0, 1] and [r.seed for r in kept.runs] == [0]
    assert kept.state.value == "kept" and "deterministic metric: one run decides" in kept.reason
    assert kept.effect == pytest.approx(baseline.metric - kept.metric) and kept.effect_se == 0


def test_a_metric_that_ignores_the_seed_is_told_once_in_plain_words_and_flagged(make_toy, cli):
    toy = make_toy(config=CONFIG.replace('rule = "plain"', "calibrate_seeds = 8"))
    first = run(cli, toy, [LR_2], "--experiments", "1")
    again = run(cli, toy, [LR_2], "--experiments", "1")
    assert first.out.count("does not use AUTORESEARCH_SEED") == 1 and "--seed $AUTORESEARCH_SEED" in first.out
    assert "AUTORESEARCH_SEED" not in again.out  # once: a resumed line does not calibrate again
    flags = json.loads(cli("status", "-C", toy.root, "--json").out)["flags"]
    assert [f["kind"] for f in flags] == ["seed"] and "exactly the same" in flags[0]["message"]


def test_a_metric_that_moves_with_the_seed_calibrates_every_seed_without_a_warning(make_toy, cli):
    noisy = TRAIN.replace('print(f"score: {{(LR - 3.0)', 'print(f"score: {{int(os.environ[\'AUTORESEARCH_SEED\']) / 100 + (LR - 3.0)')
    toy = make_toy(config=CONFIG.replace('rule = "plain"', "calibrate_seeds = 3"), train=noisy)
    result = run(cli, toy, [], "--experiments", "0")
    assert result.code == 0, result.text
    assert [r.seed for r in toy.experiments()[0].runs] == [0, 1, 2] and "AUTORESEARCH_SEED" not in result.out


def test_run_sees_no_secrets_from_the_harness_environment(make_toy, cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    train = TRAIN + 'print(f"leaked: {{sum(1 for k in os.environ if \'SECRET\' in k or \'API_KEY\' in k)}}")\n'
    toy = make_toy(train=train)
    assert run(cli, toy, [], "--experiments", "0").code == 0
    assert toy.experiments()[0].runs[0].metrics["leaked"] == 0


def test_uncommitted_changes_to_watched_files_refuse_to_start(toy, cli):
    (toy.root / "train.py").write_text((toy.root / "train.py").read_text().replace("LR = 1.0", "LR = 9.0"))
    result = run(cli, toy, [LR_2])
    assert result.code == 1
    assert "uncommitted changes in train.py" in result.err
    assert toy.branch() is None


def test_a_new_tag_starts_its_own_line_from_head(toy, cli):
    run(cli, toy, [LR_2])
    before = toy.branch()
    result = cli("run", "-C", toy.root, "--tag", "other", *toy.scripted([LR_1_5], "other.json"))
    assert result.code == 0, result.text
    baseline, lr_1_5 = toy.experiments("other")
    assert (baseline.commit, lr_1_5.state) == (toy.resolve("main"), State.KEPT)  # 3.65 beats 5.4
    assert toy.branch("other") == lr_1_5.commit
    assert toy.branch() == before


# ---------------------------------------------------------------- the search agent

DESCRIPTION = re.compile(r"^[A-Z_]+ \S+ -> \S+(, [A-Z_]+ \S+ -> \S+)*$")


def search(toy, n):
    return ["run", "-C", toy.root, "--tag", TAG, "--agent", "search", "--experiments", str(n)]


def test_search_agent_describes_each_change_as_old_to_new(toy, cli):
    assert cli(*search(toy, 3)).code == 0
    proposed = [e for e in toy.experiments() if e.agent == "search"]
    assert len(proposed) == 3
    for experiment in proposed:
        assert DESCRIPTION.match(experiment.description), experiment.description


def test_search_agent_description_matches_the_commit(toy, cli):
    assert cli(*search(toy, 1)).code == 0
    baseline, experiment = toy.experiments()
    for change in experiment.description.split(", "):
        name, old, _, new = change.split()
        assert float(old) == baseline.knobs[name]
        assert float(new) == experiment.knobs[name]


def test_search_agent_resumed_in_a_new_process_never_repeats_a_configuration(toy, cli, cli_process):
    assert cli(*search(toy, 4)).code == 0
    result = cli_process(*search(toy, 4))
    assert result.code == 0, result.text
    experiments = toy.experiments()
    assert [e.index for e in experiments] == list(range(9))
    assert {e.session_id for e in experiments[5:]} == {2}
    configurations = [tuple(sorted(e.knobs.items())) for e in experiments if e.knobs]
    assert len(configurations) == 9
    assert len(set(configurations)) == len(configurations)


def test_a_second_session_on_the_same_target_is_refused(toy):
    from autoresearch import agents
    from autoresearch.executor import LocalExecutor
    from autoresearch.session import Session
    from autoresearch.target import Target

    first = Session.open(Target.open(toy.root), agents.create("search"), "search", LocalExecutor(), tag=TAG,
                         say=lambda line: None)
    try:
        result = run_cli("run", "-C", toy.root, "--tag", TAG, "--experiments", "0")
        assert result.code == 1
        assert f"another autoresearch session (pid {os.getpid()}) is running" in result.err
    finally:
        first.close()
    assert run_cli("run", "-C", toy.root, "--tag", TAG, "--experiments", "0").code == 0


def test_each_search_proposal_moves_one_or_two_knobs_from_the_best(make_toy, cli):
    extra = '\n[[knobs]]\nname = "SLEEP"\nfile = "train.py"\nlow = 0.0\nhigh = 0.01\n'
    toy = make_toy(config=CONFIG + extra)
    assert cli(*search(toy, 6)).code == 0
    experiments = toy.experiments()
    best = {e.commit: e.knobs for e in experiments if e.commit}
    for experiment in experiments[1:]:
        before = best[experiment.parent]
        moved = {name for name, value in experiment.knobs.items() if value != before[name]}
        assert 1 <= len(moved) <= 2 and len(experiment.description.split(", ")) == len(moved), experiment.description


def test_a_knob_outside_its_range_is_moved_first_and_alone(make_toy, cli):
    toy = make_toy(train=TRAIN.replace("LR = 1.0 ", "LR = 0.01"))  # its range is 0.1..10
    assert cli(*search(toy, 1)).code == 0
    baseline, first = toy.experiments()
    assert first.description.startswith("LR 0.01 -> ") and ", " not in first.description
    assert first.knobs["WIDTH"] == baseline.knobs["WIDTH"] and 0.1 <= first.knobs["LR"] <= 10
