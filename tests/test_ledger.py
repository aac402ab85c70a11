"""The ledger: a real SQLite file; migrations, immutable finished experiments, recovery after a kill."""

import sqlite3

import pytest

from autoresearch.ledger import MIGRATIONS, Ledger
from autoresearch.records import RunRecord, RunState, State

BASE = "a" * 40


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(tmp_path / ".autoresearch" / "ledger.sqlite")
    ledger.create_tag("t", "autoresearch/t", BASE)
    yield ledger
    ledger.close()


def add(ledger, state, tag="t", commit=None, description="x", agent="scripted"):
    return ledger.add_experiment(tag=tag, session_id=None, state=state, parent=BASE, commit=commit,
                                 description=description, agent=agent)


def test_open_creates_the_file_and_applies_every_migration(tmp_path):
    path = tmp_path / "state" / "ledger.sqlite"
    Ledger(path).close()
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]


def test_reopening_migrates_nothing_twice_and_keeps_the_data(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first = Ledger(path)
    first.create_tag("t", "autoresearch/t", BASE)
    add(first, State.BASELINE, commit=BASE)
    first.close()
    for _ in range(2):
        Ledger(path).close()
    again = Ledger(path)
    assert [e.state for e in again.experiments("t")] == [State.BASELINE]
    assert again.db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == len(MIGRATIONS)


def _open_and_close(path):
    Ledger(path).close()


def test_processes_opening_a_fresh_ledger_at_once_migrate_it_once(tmp_path):
    # A session creates the ledger while `status` or the dashboard opens it: both must come out migrated.
    import multiprocessing

    path = tmp_path / "ledger.sqlite"
    context = multiprocessing.get_context("spawn")
    with context.Pool(6) as pool:
        pool.map(_open_and_close, [path] * 12)
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]


def test_indexes_count_from_zero_per_tag(ledger):
    ledger.create_tag("u", "autoresearch/u", BASE)
    indexes = [add(ledger, State.REJECTED, tag=tag).index for tag in ("t", "t", "u", "t", "u")]
    assert indexes == [0, 1, 0, 2, 1]


@pytest.mark.parametrize("final", [s for s in State if s.final])
def test_a_final_state_cannot_be_changed(ledger, final):
    experiment = add(ledger, State.RUNNING, commit=BASE)
    ledger.set_state(experiment.id, final, metric=1.5, reason="decided")
    with pytest.raises(ValueError, match="immutable"):
        ledger.set_state(experiment.id, State.KEPT, metric=0.1, reason="changed my mind")
    after = ledger.experiment(experiment.id)
    assert (after.state, after.metric, after.reason) == (final, 1.5, "decided")


def test_an_experiment_added_in_a_final_state_is_finished_at_once(ledger):
    experiment = add(ledger, State.REJECTED)
    assert experiment.finished_at is not None
    with pytest.raises(ValueError):
        ledger.set_state(experiment.id, State.RUNNING)


def test_set_state_keeps_fields_it_is_not_given(ledger):
    experiment = add(ledger, State.RUNNING, commit=BASE)
    ledger.set_state(experiment.id, State.RUNNING, reason="started")
    finished = ledger.set_state(experiment.id, State.DISCARDED, metric=2.0)
    assert (finished.state, finished.metric, finished.reason) == (State.DISCARDED, 2.0, "started")
    assert finished.finished_at is not None


def test_interrupt_unfinished_marks_proposed_and_running_as_interrupted(ledger):
    proposed, running = add(ledger, State.PROPOSED), add(ledger, State.RUNNING, commit=BASE)
    ids = ledger.interrupt_unfinished("t", "the harness stopped")
    assert sorted(ids) == sorted([proposed.id, running.id])
    for experiment_id in ids:
        experiment = ledger.experiment(experiment_id)
        assert experiment.state is State.INTERRUPTED
        assert experiment.reason == "the harness stopped"
        assert experiment.finished_at is not None


def test_interrupt_unfinished_leaves_finished_experiments_and_other_tags_alone(ledger):
    ledger.create_tag("u", "autoresearch/u", BASE)
    kept = add(ledger, State.RUNNING, commit=BASE)
    ledger.set_state(kept.id, State.KEPT, metric=1.0, reason="better")
    other = add(ledger, State.RUNNING, tag="u")
    assert ledger.interrupt_unfinished("t", "stopped") == []
    assert ledger.experiment(kept.id).state is State.KEPT
    assert ledger.experiment(kept.id).reason == "better"
    assert ledger.experiment(other.id).state is State.RUNNING


def test_best_is_the_last_kept_else_the_baseline(ledger):
    assert ledger.best("t") is None
    baseline = add(ledger, State.BASELINE, commit=BASE, agent="harness")
    assert ledger.best("t").id == baseline.id
    kept = add(ledger, State.KEPT, commit="b" * 40)
    add(ledger, State.DISCARDED, commit="c" * 40)
    add(ledger, State.CRASHED, commit="d" * 40)
    assert ledger.best("t").id == kept.id
    assert ledger.baseline("t").id == baseline.id


def test_runs_are_read_back_with_the_experiment(ledger):
    experiment = add(ledger, State.RUNNING, commit=BASE)
    for seed in (0, 1):
        ledger.add_run(RunRecord(experiment_id=experiment.id, seed=seed, state=RunState.OK, metric=1.0 + seed,
                                 metrics={"score": 1.0 + seed, "steps": 10}, seconds=0.5, peak_memory_mb=64.0,
                                 exit_code=0, log_tail="score: 1.0\n", log_path="/tmp/log.txt"))
    runs = ledger.experiment(experiment.id).runs
    assert [(r.seed, r.state, r.metric, r.metrics["steps"], r.log_tail) for r in runs] == \
        [(0, RunState.OK, 1.0, 10, "score: 1.0\n"), (1, RunState.OK, 2.0, 10, "score: 1.0\n")]


def test_a_failed_write_leaves_nothing_behind(ledger):
    experiment = add(ledger, State.RUNNING, commit=BASE)
    with pytest.raises(ValueError):
        ledger.set_state(experiment.id, "no such state")
    assert ledger.experiment(experiment.id).state is State.RUNNING
    assert not ledger.db.in_transaction


def test_sessions_record_their_end(ledger):
    session = ledger.start_session("t", "scripted", "1s", ["autoresearch", "run"], 123)
    ledger.end_session(session, "done: 2 experiments")
    (row,) = ledger.sessions("t")
    assert (row["id"], row["agent"], row["end_reason"]) == (session, "scripted", "done: 2 experiments")
    assert row["ended_at"] >= row["started_at"]


def test_latest_tag_is_the_one_with_the_latest_session(ledger):
    ledger.create_tag("u", "autoresearch/u", BASE)
    assert ledger.latest_tag() == "u"
    ledger.start_session("t", "scripted", "1s", [], 1)
    assert ledger.latest_tag() == "t"


def test_runs_recorded_before_run_budgets_get_the_budget_of_the_session_they_ran_in(tmp_path, monkeypatch):
    # A calibration at another budget adds runs to an experiment of an earlier session: each run's budget is the one
    # of the session that was open when it finished (one session per target at a time), not its experiment's.
    import autoresearch.ledger as ledger_module

    before = [i for i, (name, _) in enumerate(MIGRATIONS) if name.endswith("_run_budget")][0]
    path = tmp_path / "ledger.sqlite"
    with monkeypatch.context() as patch:
        patch.setattr(ledger_module, "MIGRATIONS", MIGRATIONS[:before])
        old = Ledger(path)
        old.create_tag("t", "autoresearch/t", BASE)
        for session, budget, started in ((1, "60s", 100.0), (2, "30s", 200.0)):
            old.db.execute("INSERT INTO sessions (id, tag, agent, budget, argv, pid, started_at) "
                           "VALUES (?, 't', 'x', ?, '[]', 1, ?)", (session, budget, started))
        old.db.execute("INSERT INTO experiments (id, tag, idx, session_id, state, commit_sha, description, agent, "
                       "created_at) VALUES (1, 't', 0, 1, 'baseline', ?, 'baseline', 'harness', 100.0)", (BASE,))
        for seed, finished in ((0, 150.0), (1, 160.0), (2, 250.0)):
            old.db.execute("INSERT INTO runs (experiment_id, seed, state, metric, finished_at) VALUES (1, ?, 'ok', 1.0, ?)",
                           (seed, finished))
        old.db.commit()
        old.close()
    ledger = Ledger(path)
    (baseline,) = ledger.experiments("t")
    assert [(r.seed, r.budget) for r in baseline.runs] == [(0, "60s"), (1, "60s"), (2, "30s")]
    assert baseline.budget == "60s" and baseline.metrics_at("30s") == [1.0]
    ledger.close()
