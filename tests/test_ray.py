"""`--executor ray` against a real Ray cluster on this machine, started by the tests and shut down after them."""

import os
import signal
from pathlib import Path

import pytest

from autoresearch.records import RunState, State
from test_workers import assert_consistent, knobs, overlapped
from toy import TAG, alive, build_toy, run_cli, wait_for

import ray  # a test dependency (the test extra installs ray[default]): missing, these tests fail

pytestmark = pytest.mark.slow


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_under(directory: str) -> list[int]:
    """Processes whose command line names `directory` (the Ray processes of a cluster started with it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if directory.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_a_cluster_started_with_ray_start_is_used_through_address(tmp_path):
    """`ray start --head` as a user would (in a process group of its own, stopped after), then `autoresearch run
    --executor ray --address` as a command. Ray >= 2.59 authenticates: both get the same token (users share
    ~/.ray/auth_token; RAY_AUTH_MODE must be set before Ray is imported, hence a separate process)."""
    import secrets
    import subprocess
    import sys
    import tempfile
    import time

    from toy import cli_command

    port, temp = _free_port(), Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = Path(sys.executable).parent / "ray"
    with open(tmp_path / "head.log", "wb") as log:
        head = subprocess.Popen([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
                                 f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        toy = build_toy(tmp_path, sleep=0.2)
        script = toy.scripted([knobs("LR 2", LR=2.0), knobs("WIDTH 8", WIDTH=8)])
        done = subprocess.run(cli_command("run", "-C", toy.root, "--tag", TAG, "--executor", "ray", "--address",
                                          f"127.0.0.1:{port}", "--slots", "2", *script),
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "head.log").read_text()
        assert "2 slots (ray)" in done.stdout
        assert_consistent(toy)
        assert {r.slot for e in toy.experiments() for r in e.runs} <= {"ray-cpu0", "ray-cpu1"}
        assert toy.best().metric < 5.4
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head drains for up to 30 s
        try:
            head.wait(timeout=40)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 20
        while _processes_under(str(temp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in _processes_under(str(temp)):  # anything the head started outside its group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        import shutil
        shutil.rmtree(temp, ignore_errors=True)


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
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2", "--executor", "ray",
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


def test_a_new_lines_calibration_runs_as_ray_tasks_at_once(cluster, tmp_path):
    from toy import CONFIG

    toy = build_toy(tmp_path, sleep=1.0, config=CONFIG + "\n[run]\nseeds = [0, 1]\n")
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--slots", "2", "--executor", "ray", "--experiments", "0")
    assert result.code == 0, result.text
    (baseline,) = toy.experiments()
    assert baseline.state is State.BASELINE and {r.slot for r in baseline.runs} == {"ray-cpu0", "ray-cpu1"}
    assert overlapped(baseline.runs)  # two tasks in flight at once


def test_the_trusted_evaluator_runs_on_the_worker_and_rules_hold(cluster, tmp_path):
    from toy import build_guarded

    toy = build_guarded(tmp_path)
    cheat = {"description": "rewrite the evaluator while training", "replace": [{
        "file": "train.py", "old": 'print("loss: 1.0")', "new": 'open("evaluate.py", "a").write("score = 0\\n")'}]}
    protected = {"description": "edit the evaluator", "write": {"evaluate.py": "print('score: 0')\n"}}
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--executor", "ray", "--slots", "1", "--pipeline",
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
        # the first training process of an experiment (after the baseline's) descends from the Ray worker running
        # it, through the worker's fork server (forkserver.py)
        if wait_for(lambda: len(toy.pids()) >= 2, timeout=120):
            worker = toy.pids()[1]
            while "forkserver" in Path(f"/proc/{worker}/cmdline").read_text() or worker == toy.pids()[1]:
                worker = int(Path(f"/proc/{worker}/stat").read_text().rsplit(")", 1)[1].split()[1])
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    result = run_cli("run", "-C", toy.root, "--tag", TAG, "--executor", "ray", "--slots", "1", "--pipeline",
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
