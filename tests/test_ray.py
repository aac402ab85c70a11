"""`--executor ray` against a real Ray cluster on this machine, started by the tests and shut down after them."""

import os
import signal
from pathlib import Path

import pytest

from autoresearch.records import RunState, State
from test_workers import assert_consistent, knobs
from toy import TAG, alive, build_toy, run_cli, wait_for

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'autoresearch[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs that autoresearch's own package is shipped to (as `--executor ray` does)."""
    import autoresearch

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")),
             runtime_env={"py_modules": [str(Path(autoresearch.__file__).parent)]})
    try:
        yield
    finally:
        ray.shutdown()


def test_the_loop_runs_its_runs_as_ray_tasks(cluster, tmp_path):
    toy = build_toy(tmp_path, sleep=0.5)
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--workers", "2", "--executor", "ray",
                     *toy.scripted([knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8), knobs("LR 0.5", LR=0.5)]))
    assert result.code == 0, result.text
    assert "2 slots (ray)" in result.out
    assert_consistent(toy)
    experiments = toy.experiments()
    runs = [r for e in experiments for r in e.runs]
    assert runs and {r.slot for r in runs} <= {"ray-cpu0", "ray-cpu1"}
    assert all(r.state is RunState.OK for r in runs)
    log = Path(runs[0].log_path).read_text()
    assert "[autoresearch] ran on ray node" in log and "score: 5.4" in log  # the log came back
    assert toy.best().metric < 5.4
    assert ray.is_initialized()  # a cluster autoresearch did not start is left running


def test_the_trusted_evaluator_runs_on_the_worker_and_rules_hold(cluster, tmp_path):
    from toy import build_guarded

    toy = build_guarded(tmp_path)
    cheat = {"description": "rewrite the evaluator while training", "replace": [{
        "file": "train.py", "old": 'print("loss: 1.0")', "new": 'open("evaluate.py", "a").write("score = 0\\n")'}]}
    protected = {"description": "edit the evaluator", "write": {"evaluate.py": "print('score: 0')\n"}}
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--executor", "ray", "--workers", "1", "--pipeline",
                     *toy.scripted([cheat, protected]))
    assert result.code == 0, result.text
    baseline, rewrote, edited = toy.experiments()
    assert baseline.metric == pytest.approx(5.9)  # scored by evaluate.py on the worker, val offset 1.5
    assert rewrote.state is State.REJECTED and "changed tracked file evaluate.py" in rewrote.reason
    assert edited.state is State.REJECTED and "protected file evaluate.py" in edited.reason
    assert_consistent(toy)


def test_a_run_whose_ray_worker_dies_is_submitted_again(cluster, tmp_path):
    toy = build_toy(tmp_path, sleep=3.0)
    import threading

    killed = []

    def kill_the_worker():
        # the first training process of an experiment (after the baseline's) is a child of the Ray worker running it
        if wait_for(lambda: len(toy.pids()) >= 2, timeout=120):
            pid = toy.pids()[1]
            worker = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--executor", "ray", "--workers", "1", "--pipeline",
                     *toy.scripted([knobs("LR 2", LR=2.0)]))
    killer.join(timeout=5)
    assert result.code == 0, result.text
    assert killed and not alive(killed[0])
    _, experiment = toy.experiments()
    assert experiment.state is State.KEPT and experiment.metric == pytest.approx(2.4)
    (run,) = experiment.runs
    assert run.state is RunState.OK
    flags = [f for f in toy.ledger().flags(TAG) if f["kind"] == "requeued"]
    assert len(flags) == 1 and "submitted again (attempt 2)" in flags[0]["message"]
    assert_consistent(toy)
