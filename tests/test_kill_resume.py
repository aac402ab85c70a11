"""Kill-and-resume consistency: the harness SIGKILLed at any moment resumes with nothing lost and nothing
counted twice; Ctrl-C (or SIGTERM) while a run is in flight stops cleanly and kills the run."""

import os
import random
import signal
import subprocess
import time

import pytest

from autoresearch.executor import KILL_GRACE_SECONDS
from autoresearch.records import State
from toy import TAG, alive, build_toy, children, cli_command, group_alive, run_cli, wait_for


def knobs(description, **values):
    return {"description": description, "knobs": values}


SCRIPT = [
    knobs("LR 2", LR=2.0),                                                       # kept
    knobs("LR 1.5", LR=1.5),                                                     # discarded
    knobs("WIDTH 8", WIDTH=8),                                                   # kept
    {"description": "tune the scorer", "write": {"scorer.py": "PENALTY = -1\n"}},  # rejected
    knobs("LR 2.5", LR=2.5),                                                     # kept
    {"description": "crash", "replace": [{"file": "train.py", "old": "time.sleep(SLEEP)\n",
                                          "new": "raise SystemExit(1)\n"}]},     # crashed
    knobs("WIDTH 12", WIDTH=12),                                                 # discarded
    knobs("LR 3", LR=3.0),                                                       # kept
    knobs("LR 4", LR=4.0),                                                       # discarded
    knobs("WIDTH 7", WIDTH=7),                                                   # discarded
    knobs("LR 3.5", LR=3.5),                                                     # discarded
    knobs("WIDTH 8 again", WIDTH=8),                                             # rejected: no change
]
FINISHED = {State.BASELINE, State.KEPT, State.DISCARDED, State.CRASHED, State.REJECTED, State.INTERRUPTED}


def kill(process) -> None:
    """SIGKILL the harness alone, then wait for the git commands it had started to finish."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert wait_for(lambda: not group_alive(process.pid), timeout=10)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """SIGKILL the harness at random moments (and twice with a run in flight), then resume to the end.

    Returns the toy, the indexes that were left unfinished in the ledger by a kill, and the final session."""
    tmp = tmp_path_factory.mktemp("kill")
    toy = build_toy(tmp, sleep=0.3)
    args = ["run", "-C", toy.root, "--tag", TAG, *toy.scripted(SCRIPT)]
    rng = random.Random(20240607)
    unfinished: set[int] = set()
    in_flight_kills = 0
    for trial in range(7):
        with open(tmp / "harness.log", "ab") as log:
            process = subprocess.Popen(cli_command(*args), stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            if trial in (1, 3):  # while a run is in flight: a train.py of this harness has started
                assert wait_for(lambda: children(process.pid, toy.pids()), timeout=30)
            else:
                time.sleep(rng.uniform(0.1, 1.5))
            if process.poll() is not None:
                continue  # it finished the script on its own
            kill(process)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        left = toy.unfinished()
        if trial in (1, 3):
            in_flight_kills += 1
            assert left, "a harness killed while a run was in flight must have left it running in the ledger"
        unfinished |= left
    assert in_flight_kills == 2
    print(f"left unfinished by the kills: {sorted(unfinished)}")
    final = run_cli(*args)
    return toy, unfinished, final


@pytest.mark.slow
def test_resume_finishes_the_script(killed_and_resumed):
    _, _, final = killed_and_resumed
    assert final.code == 0, final.text
    assert "the agent has no more proposals" in final.out


@pytest.mark.slow
def test_no_experiment_is_left_proposed_or_running(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    assert all(e.state in FINISHED for e in toy.experiments())


@pytest.mark.slow
def test_exactly_the_experiments_killed_mid_run_are_interrupted(killed_and_resumed):
    toy, unfinished, _ = killed_and_resumed
    interrupted = {e.index for e in toy.experiments() if e.state is State.INTERRUPTED}
    assert interrupted == unfinished
    assert all(e.reason == "the harness stopped while it ran" for e in toy.experiments() if e.index in interrupted)


@pytest.mark.slow
def test_each_scripted_proposal_is_recorded_once_in_order(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    proposed = [e.description for e in toy.experiments() if e.agent == "scripted"]
    assert proposed == [step["description"] for step in SCRIPT]


@pytest.mark.slow
def test_exactly_one_baseline_finished(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    baselines = [e for e in toy.experiments() if e.agent == "harness"]
    assert [e.state for e in baselines if e.state is not State.INTERRUPTED] == [State.BASELINE]
    assert {e.commit for e in baselines} == {toy.resolve("main")}


def replay(skipped: set[str]) -> list[State]:
    """The outcomes of SCRIPT run without interruption, less the `skipped` proposals, by the toy's formula."""
    def score(values):
        return (values["LR"] - 3.0) ** 2 + abs(values["WIDTH"] - 8) / 10 + 1.0

    best, outcomes = {"LR": 1.0, "WIDTH": 4}, []
    for step in SCRIPT:
        if step["description"] in skipped:
            continue
        trial = {**best, **step.get("knobs", {})}
        if "knobs" not in step or trial == best:
            outcomes.append(State.CRASHED if "replace" in step else State.REJECTED)
            continue
        better = score(trial) < score(best)
        best = trial if better else best
        outcomes.append(State.KEPT if better else State.DISCARDED)
    return outcomes


@pytest.mark.slow
def test_outcomes_are_those_of_an_uninterrupted_session_less_the_interrupted(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    scripted = [e for e in toy.experiments() if e.agent == "scripted"]
    interrupted = {e.description for e in scripted if e.state is State.INTERRUPTED}
    assert [e.state for e in scripted if e.state is not State.INTERRUPTED] == replay(interrupted)


@pytest.mark.slow
def test_the_branch_is_the_ledgers_best_commit(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    assert toy.branch() == toy.best().commit


@pytest.mark.slow
def test_kept_experiments_form_a_chain_of_commits(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    chain = [e for e in toy.experiments() if e.state in (State.BASELINE, State.KEPT)]
    assert chain[0].state is State.BASELINE
    for previous, kept in zip(chain, chain[1:]):
        assert kept.parent == previous.commit
        assert toy.resolve(f"{kept.commit}^") == previous.commit
    assert toy.git("rev-list", "--first-parent", f"autoresearch/{TAG}", f"^{chain[0].commit}").split() == \
        [e.commit for e in reversed(chain[1:])]


@pytest.mark.slow
def test_every_proposal_was_applied_on_the_best_commit_of_its_time(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    best = None
    for experiment in toy.experiments():
        if experiment.agent == "scripted":
            assert experiment.parent == best
        if experiment.state in (State.BASELINE, State.KEPT):
            best = experiment.commit


@pytest.mark.slow
def test_every_committed_experiment_has_its_ref(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    for experiment in toy.experiments():
        if experiment.commit:
            assert toy.resolve(f"refs/autoresearch/{TAG}/{experiment.index}") == experiment.commit


@pytest.mark.slow
def test_the_repository_is_sound(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    fsck = toy.git("fsck", "--no-progress", "--no-dangling")
    assert "error" not in fsck and "missing" not in fsck and "broken" not in fsck
    assert toy.git("status", "--porcelain") == ""
    assert toy.git("rev-parse", "--abbrev-ref", "HEAD") == "main"


@pytest.mark.slow
def test_a_next_session_starts_cleanly(killed_and_resumed):
    toy, _, _ = killed_and_resumed
    before = len(toy.experiments())
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(SCRIPT + [knobs("WIDTH 9", WIDTH=9)]))
    assert result.code == 0, result.text
    assert len(toy.experiments()) == before + 1
    assert toy.experiments()[-1].state in (State.KEPT, State.DISCARDED)


# ---------------------------------------------------------------- Ctrl-C

HANG = {"description": "ignore the budget", "replace": [{"file": "train.py", "old": "HANG = 0", "new": "HANG = 1"}]}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_while_a_run_is_in_flight_stops_cleanly(make_toy, spawn_cli, tmp_path, sig):
    toy = make_toy()
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([HANG, knobs("LR 2", LR=2.0)]),
                        log=tmp_path / "harness.log")
    assert wait_for(lambda: len(toy.pids()) == 2, timeout=30)  # the baseline's run, then the hanging one
    running = toy.pids()[1]
    os.kill(process.pid, sig)
    assert process.wait(timeout=KILL_GRACE_SECONDS + 10) == 0, (tmp_path / "harness.log").read_text()
    baseline, stopped = toy.experiments()
    assert (stopped.state, stopped.reason) == (State.INTERRUPTED, "stopped by the user while it ran")
    (session,) = toy.sessions()
    assert session["end_reason"] == "stopped by the user" and session["ended_at"] is not None
    assert not alive(running)
    assert toy.branch() == baseline.commit
    assert "session ended: stopped by the user" in (tmp_path / "harness.log").read_text()


# ---------------------------------------------------------------- death at each git update, deterministically

class Died(BaseException):
    """Stands in for SIGKILL at a chosen point: nothing in the harness catches it."""


def assert_consistent(toy, script):
    experiments = toy.experiments()
    assert all(e.state in FINISHED for e in experiments)
    assert [e.description for e in experiments if e.agent == "scripted"] == [s["description"] for s in script]
    assert toy.branch() == toy.best().commit
    for experiment in experiments:
        if experiment.commit:
            assert toy.resolve(f"refs/autoresearch/{TAG}/{experiment.index}") == experiment.commit
    chain = [e for e in experiments if e.state in (State.BASELINE, State.KEPT)]
    assert all(kept.parent == previous.commit for previous, kept in zip(chain, chain[1:]))


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("call", [1, 2, 3, 4, 5])
def test_a_harness_that_dies_at_any_git_update_resumes_consistently(toy, cli, monkeypatch, call, when):
    # with this script the updates are: the new branch, the baseline's ref, #1's ref, the branch to #1, #2's ref
    from autoresearch.gitrepo import Git

    script = [knobs("LR 2", LR=2.0), knobs("LR 1.5", LR=1.5)]
    real, calls = Git.update_ref, []

    def dying(self, ref, new, old=None):
        calls.append(ref)
        if len(calls) == call and when == "before":
            raise Died(ref)
        real(self, ref, new, old)
        if len(calls) == call and when == "after":
            raise Died(ref)

    monkeypatch.setattr(Git, "update_ref", dying)
    with pytest.raises(Died):
        cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(script))
    monkeypatch.setattr(Git, "update_ref", real)
    result = cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(script))
    assert result.code == 0, result.text
    assert_consistent(toy, script)


# ---------------------------------------------------------------- a run orphaned by a SIGKILLed harness

def test_a_run_left_by_a_killed_harness_is_killed_when_the_session_resumes(make_toy, spawn_cli, tmp_path):
    toy = make_toy()
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted([HANG]), log=tmp_path / "harness.log")
    assert wait_for(lambda: len(toy.pids()) == 2, timeout=30)
    orphan = toy.pids()[1]
    os.kill(process.pid, signal.SIGKILL)  # the run is in its own process group: it survives the harness
    process.wait()
    assert alive(orphan)
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--experiments", "0")
    assert result.code == 0, result.text
    assert f"killed process group {orphan}" in result.out
    assert wait_for(lambda: not alive(orphan), timeout=5)
    assert toy.experiments()[1].state is State.INTERRUPTED
