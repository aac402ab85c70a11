"""Several experiments at once (`run --slots N`): real processes on CPU slots, the toy targets, real git and SQLite.

What must hold whatever the interleaving: the ledger and the branch agree, the kept experiments form a chain, every
experiment ran on the parent it records, two winners from one parent are stacked (or their conflict recorded), a
run that dies loses nothing, and a coordinator SIGKILLed with runs in flight resumes consistently.
"""

import os
import signal
from collections import Counter

import pytest

from autoresearch.agents import Context
from autoresearch.agents.search import SearchAgent
from autoresearch.config import load
from autoresearch.executor import Slot, local_slots
from autoresearch.records import RunState, State
from autoresearch.runner import MALLOC_TUNING, Runner, RunSpec
from autoresearch.budget import Budget
from autoresearch.target import Target
from toy import CONFIG, TAG, alive, build_guarded, build_toy, children, group_alive, quick_judge, run_cli, wait_for

FINAL = {State.BASELINE, State.KEPT, State.DISCARDED, State.CRASHED, State.REJECTED, State.INTERRUPTED,
         State.SUPERSEDED, State.TIMEOUT}


def knobs(description, **values):
    return {"description": description, "knobs": values}


def run(toy, steps, *extra):
    result = run_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), *extra)
    assert result.code == 0, result.text
    return result


def assert_consistent(toy):
    """The ledger and git agree: the branch at the best, a chain of kept commits, each experiment's commit on the
    parent it records and at its ref, nothing left running, the user's checkout untouched."""
    experiments = toy.experiments()
    assert all(e.state in FINAL for e in experiments), [(e.index, e.state) for e in experiments]
    assert toy.branch() == toy.best().commit
    chain = [e for e in experiments if e.state in (State.BASELINE, State.KEPT)]
    for previous, kept in zip(chain, chain[1:]):
        assert kept.parent == previous.commit
    kept_commits = {e.commit for e in chain}
    for e in experiments:
        if e.commit:
            assert toy.resolve(f"refs/autoresearch/{TAG}/{e.index}") == e.commit
            if e.parent:
                assert toy.resolve(f"{e.commit}^") == e.parent
        if e.parent:
            assert e.parent in kept_commits  # every experiment started from a best of its time
    assert toy.git("status", "--porcelain", "--untracked-files=no") == ""
    assert toy.git("rev-parse", "--abbrev-ref", "HEAD") == "main"


def overlapped(runs) -> bool:
    """Whether two of the runs were in flight at the same time."""
    spans = sorted((r.started_at, r.started_at + r.seconds) for r in runs if r.started_at)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


# ---------------------------------------------------------------- slots

def test_cpu_slots_split_the_cores():
    slots = local_slots("cpu", 2)
    assert [s.name for s in slots] == ["cpu0", "cpu1"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert all(s.threads == max(1, cores // 2) for s in slots)
    if cores >= 2:
        assert not set(slots[0].cpus) & set(slots[1].cpus)
    assert local_slots("cpu", None) == [Slot("cpu0", "cpu", cores)]


def test_gpu_slots_each_see_one_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    slots = local_slots("auto", None)
    assert [(s.name, s.device, s.visible_devices) for s in slots] == [("gpu0", "cuda", "3"), ("gpu1", "cuda", "5")]
    assert [s.visible_devices for s in local_slots("cuda", 3)] == ["3", "5", "3"]  # more slots than GPUs: shared
    assert [s.visible_devices for s in local_slots("cuda:1", None)] == ["5"]
    toy = build_toy(tmp_path)
    spec = RunSpec(0, toy.root, 0, Budget.parse("1s"), 10, tmp_path / "run")
    env = Runner(Target.open(toy.root), None).env(spec, slots[1], tmp_path, tmp_path)
    assert (env["CUDA_VISIBLE_DEVICES"], env["AUTORESEARCH_DEVICE"]) == ("5", "cuda")


def test_runs_get_malloc_tuning_unless_the_user_tunes_malloc(monkeypatch, tmp_path):
    toy = build_toy(tmp_path)
    spec = RunSpec(0, toy.root, 0, Budget.parse("1s"), 10, tmp_path / "run")
    slot = local_slots("cpu", None)[0]
    for name in [name for name in os.environ if name.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    env = Runner(Target.open(toy.root), None).env(spec, slot, tmp_path, tmp_path)
    assert {name: env[name] for name in MALLOC_TUNING} == MALLOC_TUNING
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # the user's own tuning wins, whole
    env = Runner(Target.open(toy.root), None).env(spec, slot, tmp_path, tmp_path)
    assert env["MALLOC_ARENA_MAX"] == "2" and not set(MALLOC_TUNING) & set(env)


# ---------------------------------------------------------------- several slots

SCRIPT = [knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8), knobs("LR 1.5", LR=1.5), knobs("WIDTH 6", WIDTH=6),
          knobs("LR 3", LR=3.0), knobs("WIDTH 12", WIDTH=12)]


@pytest.fixture(scope="module")
def researched(tmp_path_factory):
    """The toy after a session with three slots over SCRIPT (runs of 0.6 s, so they overlap)."""
    toy = build_toy(tmp_path_factory.mktemp("workers"), sleep=0.6)
    result = run(toy, SCRIPT, "--slots", "3")
    return toy, result


def test_several_slots_run_at_once_and_the_ledger_and_branch_agree(researched):
    toy, result = researched
    assert "3 slots" in result.out
    assert_consistent(toy)
    runs = [r for e in toy.experiments() for r in e.runs]
    assert {r.slot for r in runs} == {"cpu0", "cpu1", "cpu2"}
    assert overlapped(runs)
    assert {e.slot for e in toy.experiments() if e.runs} <= {"cpu0", "cpu1", "cpu2"}


def test_each_proposal_is_recorded_once(researched):
    toy, _ = researched
    proposed = Counter(e.description for e in toy.experiments() if e.agent == "scripted")
    assert proposed == Counter(step["description"] for step in SCRIPT)


def test_the_best_is_the_best_of_what_was_measured_on_the_chain(researched):
    toy, _ = researched
    best = toy.best()
    kept = [e for e in toy.experiments() if e.state is State.KEPT]
    assert kept and best.metric == min(e.metric for e in kept)
    assert best.metric < 5.4


def test_status_shows_the_slots(researched):
    toy, _ = researched
    status = run_cli("status", "-C", toy.root, "--json")
    import json
    slots = {s["slot"]: s for s in json.loads(status.out)["slots"]}
    assert set(slots) == {"cpu0", "cpu1", "cpu2"}
    assert all(s["runs"] >= 1 and s["busy_seconds"] > 0 and s["running"] is None for s in slots.values())
    text = run_cli("status", "-C", toy.root).out
    assert "slots:" in text and "cpu1" in text


# ---------------------------------------------------------------- stacking and conflicts

def test_two_winners_from_one_parent_are_stacked_and_rejudged(make_toy):
    toy = make_toy(sleep=2.0)
    run(toy, [knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8)], "--slots", "2")
    assert_consistent(toy)
    experiments = toy.experiments()
    superseded = [e for e in experiments if e.state is State.SUPERSEDED]
    assert len(superseded) == 1  # both won against the baseline; the later one could not be kept as it was
    (stacked,) = [e for e in experiments if e.origin == superseded[0].index]
    first = next(e for e in experiments if e.state is State.KEPT and e.agent == "scripted")
    assert (stacked.agent, stacked.parent, stacked.proposed_on) == ("stacking", first.commit, superseded[0].parent)
    assert stacked.state is State.KEPT and stacked.metric == pytest.approx(2.0)  # LR 2 and WIDTH 8 together
    assert stacked.runs  # judged again, against the first winner
    assert "re-applied on the best (stacked)" in superseded[0].reason
    assert toy.best().commit == stacked.commit
    tsv = toy.root.parent / "results.tsv"
    assert run_cli("export", "-C", toy.root, "--tsv", tsv).code == 0
    row = next(line for line in tsv.read_text().splitlines() if line.startswith(superseded[0].commit[:7]))
    assert "\tdiscard\t" in row and "[superseded: " in row


def test_a_stacking_conflict_is_recorded(make_toy):
    toy = make_toy(sleep=2.0)
    run(toy, [knobs("LR 2", LR=2.0), knobs("LR 2.5", LR=2.5)], "--slots", "2")  # both win; the same line
    assert_consistent(toy)
    experiments = toy.experiments()
    (superseded,) = [e for e in experiments if e.state is State.SUPERSEDED]
    (conflict,) = [e for e in experiments if e.origin == superseded.index]
    assert conflict.state is State.REJECTED and conflict.commit is None
    assert conflict.reason.startswith(f"stacking #{superseded.index} on #")
    assert "conflict in train.py" in conflict.reason
    assert toy.resolve(f"refs/autoresearch/{TAG}/{superseded.index}") == superseded.commit  # not lost


def test_a_proposal_made_on_an_old_best_is_rebased_and_records_it(make_toy):
    toy = make_toy(sleep=1.0)
    slow = {"description": "slower, no better", "replace": [{"file": "train.py", "old": "SLEEP = 1.0",
                                                             "new": "SLEEP = 4.0"}]}
    # WIDTH 6 is proposed on the baseline while LR 2 and the slow one train, and takes LR 2's slot once it is kept
    run(toy, [knobs("LR 2", LR=2.0), slow, knobs("WIDTH 6", WIDTH=6)], "--slots", "2")
    assert_consistent(toy)
    experiments = toy.experiments()
    width = next(e for e in experiments if e.description == "WIDTH 6")
    lr2 = next(e for e in experiments if e.description == "LR 2")
    assert lr2.state is State.KEPT and width.parent == lr2.commit
    assert width.proposed_on == toy.resolve("main")  # the agent saw the baseline
    assert toy.git("show", f"{width.commit}:train.py").count("LR = 2.0") == 1  # ran with LR 2 under it
    assert width.metric == pytest.approx(2.2)  # (2 - 3)² + |6 - 8| / 10 + 1


# ---------------------------------------------------------------- the search agent in parallel

def test_the_search_never_proposes_what_is_in_flight(toy):
    config = load(toy.root)
    files = {"train.py": (toy.root / "train.py").read_text()}
    from autoresearch.records import Experiment
    baseline = Experiment(id=1, tag=TAG, index=0, state=State.BASELINE, parent=None, commit="x", description="b",
                          agent="harness", metric=5.4, knobs={"LR": 1.0, "WIDTH": 4})
    agent, pending = SearchAgent(), []
    for _ in range(6):
        proposal = agent.propose(Context(config, "", files, baseline, baseline, (baseline,), pending=tuple(pending)))
        pending.append(proposal)
    points = [tuple(sorted(p.meta["knobs"].items())) for p in pending]
    assert len(set(points)) == len(points)


# ---------------------------------------------------------------- failures

HANG = {"description": "hang", "replace": [{"file": "train.py", "old": "HANG = 0", "new": "HANG = 1"}]}


def test_a_run_that_dies_loses_nothing(make_toy, spawn_cli, tmp_path):
    """One worker's training process is SIGKILLed: its experiment is recorded crashed, the others go on."""
    toy = make_toy(sleep=0.3)
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2",
                        *toy.scripted([HANG, knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8)]),
                        log=tmp_path / "harness.log")
    # the baseline, then the hanging run beside LR 2, then WIDTH 8 (rebased on LR 2) while it still hangs
    assert wait_for(lambda: len(toy.pids()) >= 4, timeout=60)
    (hanging,) = [pid for pid in toy.pids()[1:3] if alive(pid)]
    os.kill(hanging, signal.SIGKILL)
    assert process.wait(timeout=60) == 0, (tmp_path / "harness.log").read_text()
    assert_consistent(toy)
    experiments = toy.experiments()
    died = next(e for e in experiments if e.description == "hang")
    assert died.state is State.CRASHED and "train exited with code -9" in died.reason
    assert {e.description for e in experiments if e.state in (State.KEPT, State.SUPERSEDED)} >= {"LR 2", "WIDTH 8"}


def test_a_coordinator_killed_with_runs_in_flight_resumes_consistently(make_toy, spawn_cli, tmp_path):
    toy = make_toy(sleep=0.3)
    script = [HANG, HANG | {"description": "hang too"}, knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8)]
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2", *toy.scripted(script),
                        log=tmp_path / "harness.log")
    assert wait_for(lambda: len(children(process.pid, toy.pids())) == 2, timeout=60)  # both slots hang
    in_flight = children(process.pid, toy.pids())
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert all(alive(pid) for pid in in_flight)  # the runs outlive the coordinator (their own process groups)
    assert len(toy.unfinished()) == 2
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2", *toy.scripted(script))
    assert result.code == 0, result.text
    for pid in in_flight:
        assert f"killed process group {pid}" in result.out
        assert wait_for(lambda: not group_alive(pid), timeout=10)
    assert_consistent(toy)
    experiments = toy.experiments()
    interrupted = [e for e in experiments if e.state is State.INTERRUPTED]
    assert sorted(e.description for e in interrupted) == ["hang", "hang too"]
    assert all(e.reason == "the harness stopped while it ran" for e in interrupted)
    proposed = Counter(e.description for e in experiments if e.agent == "scripted")
    assert proposed == Counter(step["description"] for step in script)  # queued ones were proposed again, once
    assert {e.description for e in experiments if e.state in (State.KEPT, State.SUPERSEDED)} >= {"LR 2", "WIDTH 8"}


def test_ctrl_c_stops_every_slot(make_toy, spawn_cli, tmp_path):
    toy = make_toy()
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2",
                        *toy.scripted([HANG, HANG | {"description": "hang too"}]), log=tmp_path / "harness.log")
    assert wait_for(lambda: len(children(process.pid, toy.pids())) == 2, timeout=60)
    running = children(process.pid, toy.pids())
    os.kill(process.pid, signal.SIGINT)
    assert process.wait(timeout=30) == 0, (tmp_path / "harness.log").read_text()
    assert not any(alive(pid) for pid in running)
    stopped = [e for e in toy.experiments() if e.agent == "scripted"]
    assert [(e.state, e.reason) for e in stopped] == [(State.INTERRUPTED, "stopped by the user while it ran")] * 2
    assert toy.sessions()[-1]["end_reason"] == "stopped by the user"
    assert_consistent(toy)


# ---------------------------------------------------------------- the statistical judge, with an evaluator

def test_slots_with_the_statistical_judge_and_a_trusted_evaluator(tmp_path):
    toy = build_guarded(tmp_path, noise=0.01)
    def edit(description, old, new):
        return {"description": description, "replace": [{"file": "train.py", "old": old, "new": new}]}

    run(toy, [edit("LR 2", "LR = 1.0", "LR = 2.0"), edit("WIDTH 8", "WIDTH = 4", "WIDTH = 8"),
              edit("LR 0.5", "LR = 1.0", "LR = 0.5")], "--slots", "2")
    assert_consistent(toy)
    experiments = toy.experiments()
    assert experiments[0].state is State.BASELINE and len(experiments[0].runs) == 2
    assert all(r.state is RunState.OK for e in experiments for r in e.runs)
    low = next(e for e in experiments if e.description == "LR 0.5")
    assert low.state in (State.DISCARDED, State.REJECTED)  # worse; or, on LR 2, its edit no longer applies
    assert any(e.state is State.KEPT for e in experiments)
    # every slot works from the first minute to the last: the baseline's calibration runs and the held-out test
    assert {r.slot for r in experiments[0].runs} == {"cpu0", "cpu1"} and overlapped(experiments[0].runs)
    (heldout,) = [v for v in toy.ledger().verifications(TAG) if v["kind"] == "heldout"]
    assert len(heldout["runs"]) == 4 and {r["slot"] for r in heldout["runs"]} == {"cpu0", "cpu1"}


def test_the_old_workers_flag_still_works_and_is_hidden(make_toy):
    toy = make_toy(sleep=0.3)
    result = run(toy, [knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8)], "--workers", "2")  # scripts of before
    assert "2 slots" in result.out
    assert {r.slot for e in toy.experiments() for r in e.runs} == {"cpu0", "cpu1"}
    for command in ("run", "calibrate", "verify"):
        usage = run_cli(command, "--help").out
        assert "--slots N" in usage and "--workers" not in usage


# ---------------------------------------------------------------- runs spread over the slots

def test_a_new_lines_calibration_runs_at_once_on_every_slot(make_toy):
    toy = make_toy(sleep=0.6, config=CONFIG + "\n[run]\nseeds = [0, 1, 2, 3]\n")
    result = run(toy, [], "--slots", "2", "--experiments", "0")
    (baseline,) = toy.experiments()
    assert baseline.state is State.BASELINE and sorted(r.seed for r in baseline.runs) == [0, 1, 2, 3]
    assert Counter(r.slot for r in baseline.runs) == {"cpu0": 2, "cpu1": 2} and overlapped(baseline.runs)
    assert "#0    baseline" in result.out


def test_verify_runs_both_sides_at_once_on_every_slot(tmp_path):
    toy = build_guarded(tmp_path)
    run(toy, [], "--experiments", "0")
    result = run_cli("verify", "-C", toy.root, "--seeds", "2", "--split", "val", "--slots", "2")
    assert result.code == 0, result.text
    (verification,) = toy.ledger().verifications(TAG)
    runs = verification["runs"]
    assert sorted((r["role"], r["seed"]) for r in runs) == [("baseline", 0), ("baseline", 1), ("candidate", 0),
                                                            ("candidate", 1)]
    assert {r["slot"] for r in runs} == {"cpu0", "cpu1"}
    spans = sorted((r["started_at"], r["started_at"] + r["seconds"]) for r in runs)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # two were in flight at once
    assert verification["summary"]["effect"]["pairs"] == 2  # paired by seed, whatever order they finished in


# ---------------------------------------------------------------- the built-in GPT target

@pytest.mark.slow
def test_slots_on_the_gpt_target_with_fixed_step_budgets(tmp_path):
    import subprocess

    root = tmp_path / "research"
    assert run_cli("init", root).code == 0
    config = root / "autoresearch.toml"  # a quicker judge: two calibration runs, at most two runs per change
    config.write_text(quick_judge(config.read_text()))
    subprocess.run(["git", "-C", str(root), "commit", "-qam", "a quicker judge"], check=True)
    prepared = run_cli("prepare", "-C", root, "--data", "stdlib")
    assert prepared.code == 0, prepared.text
    script = root.parent / "script.json"
    import json
    script.write_text(json.dumps([knobs("higher Muon LR", MATRIX_LR=0.08), knobs("longer warmdown", WARMDOWN_FRAC=0.8),
                                  knobs("much lower Muon LR", MATRIX_LR=0.004)]))
    result = run_cli("run", "-C", root, "--tag", "w", "--budget", "10steps", "--slots", "2", "--device", "cpu",
                     "--agent", "scripted", "--agent-option", f"script={script}")
    assert result.code == 0, result.text
    from autoresearch.ledger import Ledger
    ledger = Ledger(root / ".autoresearch" / "ledger.sqlite")
    experiments = ledger.experiments("w")
    best = ledger.best("w")
    assert all(e.state in FINAL for e in experiments)
    assert subprocess.run(["git", "-C", str(root), "rev-parse", "autoresearch/w"], capture_output=True,
                          text=True).stdout.strip() == best.commit
    runs = [r for e in experiments for r in e.runs]
    assert {r.slot for r in runs} == {"cpu0", "cpu1"}
    assert all(r.state is RunState.OK and r.metrics.get("num_steps") == 10 for r in runs)
    assert all(1.0 < r.metric < 8.0 for r in runs)  # scored by the trusted evaluator: a real model
    assert Counter(e.description for e in experiments if e.agent == "scripted") == Counter(
        ["higher Muon LR", "longer warmdown", "much lower Muon LR"])
