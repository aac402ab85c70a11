"""Jobs forked from a warm server (forkserver.py): a script's installed imports load once per server, and each
job runs as `python SCRIPT.py` would, in a fresh child, with its own environment, arguments and exit status."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from autoresearch import forkserver, scheduler
from autoresearch.agents import Agent, Proposal
from autoresearch.budget import Budget
from autoresearch.executor import Job, LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec
from autoresearch.sandbox import Jail, Limits
from autoresearch.session import Session
from autoresearch.target import Target
from toy import build_guarded

pytestmark = pytest.mark.skipif(not LocalExecutor.forks, reason="fork servers are Linux-only")

# An "installed" module (on PYTHONPATH, not beside the scripts) that notes every process importing it.
MARKER = '''\
import os, time
with open(os.path.join(os.environ["MARKS"], f"imported-{os.getpid()}"), "w") as f:
    f.write(repr(time.time()))
'''

SCRIPT = '''\
import atexit, os, sys, threading, time
import marker
from helper import VALUE

print(f"pid {os.getpid()} argv {sys.argv[1:]} stdin {sys.stdin.read()!r} main {__name__} cwd {os.getcwd()} "
      f"seed {os.environ.get('AUTORESEARCH_SEED')} value {VALUE} path0 {sys.path[0]}")
import numpy
print(f"numpy {numpy.random.randint(1 << 30)}")
unclosed = open("unclosed.txt", "w")
unclosed.write("kept")  # never closed nor flushed: the exit flushes it, as an interpreter's does
atexit.register(lambda: print("atexit ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
mode = os.environ.get("MODE", "")
if mode == "code":
    sys.exit(7)
if mode == "message":
    sys.exit("the script gave up")
if mode == "pool":  # concurrent.futures' workers: non-daemon threads waiting for work (torch.compile leaves some)
    from concurrent.futures import ThreadPoolExecutor
    sys.pool = ThreadPoolExecutor(2)  # kept alive, as a module-level cache keeps the compiler's
    sys.pool.submit(print, "pooled", flush=True)
if mode == "raise":
    def deep():
        raise ValueError("broken on purpose")
    deep()
'''


@pytest.fixture
def setup(tmp_path, monkeypatch):
    installed, marks, work = tmp_path / "site", tmp_path / "marks", tmp_path / "work"
    for path in (installed, marks, work):
        path.mkdir()
    (installed / "marker.py").write_text(MARKER)
    (work / "script.py").write_text(SCRIPT)
    (work / "helper.py").write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(installed))
    executor = LocalExecutor("cpu")
    yield executor, work, marks
    executor.close()


def job(work: Path, tmp_path: Path, name: str, jail=None, **env) -> Job:
    environ = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ["PYTHONPATH"], "MARKS": str(tmp_path / "marks"),
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", **env}
    return Job([sys.executable, "script.py", "--flag", name], work, environ, 60, tmp_path / f"{name}.log",
               tmp_path / "pids" / "slot.pid", jail, Limits(processes=64), preload=("marker", "numpy"))


def run(executor, job_) -> tuple[int, str]:
    result = executor.run(job_, executor.slots()[0])
    return result.exit_code, job_.log_path.read_text()


def importers(marks: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in marks.glob("imported-*"))


def test_each_job_runs_as_a_fresh_script_and_the_imports_load_once(setup, tmp_path):
    executor, work, marks = setup
    code, first = run(executor, job(work, tmp_path, "a", AUTORESEARCH_SEED="0"))
    (work / "helper.py").write_text("VALUE = 2\n")  # a neighbour is read in each job's turn, never kept
    code2, second = run(executor, job(work, tmp_path, "b", AUTORESEARCH_SEED="1"))
    assert code == code2 == 0, first + second
    assert f"argv ['--flag', 'a'] stdin '' main __main__ cwd {work} seed 0 value 1 path0 {work}" in first
    assert f"argv ['--flag', 'b'] stdin '' main __main__ cwd {work} seed 1 value 2 path0 {work}" in second
    pids = [int(log.split("pid ")[1].split()[0]) for log in (first, second)]
    assert len(importers(marks)) == 1 and importers(marks)[0] not in pids  # imported once, by the server
    assert first.index("thread finished") < first.index("atexit ran")  # joined, then atexit, as at an exit
    assert (work / "unclosed.txt").read_text() == "kept"
    assert first.split("numpy ")[1].split()[0] != second.split("numpy ")[1].split()[0]  # reseeded per child


def test_a_job_that_leaves_a_thread_pool_waiting_still_exits(setup, tmp_path):
    """A pool's workers are told to stop by threading's own exit hooks: a job's end runs them before it joins the
    threads, as an interpreter's exit does (without them every run that used torch.compile hung until killed)."""
    executor, work, _ = setup
    result = executor.run(job(work, tmp_path, "pool", MODE="pool"), executor.slots()[0])
    assert result.exit_code == 0 and not result.timed_out and "pooled" in (tmp_path / "pool.log").read_text()


def test_exit_statuses_and_errors_are_the_scripts_own(setup, tmp_path):
    executor, work, _ = setup
    assert run(executor, job(work, tmp_path, "code", MODE="code"))[0] == 7
    code, log = run(executor, job(work, tmp_path, "message", MODE="message"))
    assert code == 1 and "the script gave up" in log
    code, log = run(executor, job(work, tmp_path, "raise", MODE="raise"))
    assert code == 1 and "ValueError: broken on purpose" in log
    trace = log[log.index("Traceback"):]
    assert "script.py" in trace and "in deep" in trace
    assert "forkserver" not in trace and "runpy" not in trace  # the script's frames only


def test_a_server_is_replaced_when_what_it_fixed_changes(setup, tmp_path):
    executor, work, marks = setup
    jail = Jail(readonly=(tmp_path,), writable=(work, marks))
    assert run(executor, job(work, tmp_path, "a", jail))[0] == 0
    shutil.rmtree(work)  # a worktree made anew: the old server's sandbox still binds the old directory
    work.mkdir()
    (work / "script.py").write_text(SCRIPT)
    (work / "helper.py").write_text("VALUE = 3\n")
    code, log = run(executor, job(work, tmp_path, "b", jail))
    assert code == 0 and "value 3" in log and (work / "unclosed.txt").read_text() == "kept"
    assert run(executor, job(work, tmp_path, "c", jail, OMP_NUM_THREADS="1"))[0] == 0  # another environment
    assert len(importers(marks)) == 3


def test_a_dead_server_costs_the_job_nothing(setup, tmp_path):
    executor, work, marks = setup
    assert run(executor, job(work, tmp_path, "a"))[0] == 0
    server_pid = int((tmp_path / "pids" / "slot.server.pid").read_text().split()[0])
    os.killpg(server_pid, 9)
    time.sleep(0.2)
    code, log = run(executor, job(work, tmp_path, "b"))
    assert code == 0 and "argv ['--flag', 'b']" in log


def test_close_ends_the_servers_and_forgets_them(setup, tmp_path):
    executor, work, _ = setup
    assert run(executor, job(work, tmp_path, "a"))[0] == 0
    server_pid = int((tmp_path / "pids" / "slot.server.pid").read_text().split()[0])
    executor.close()
    assert not (tmp_path / "pids" / "slot.server.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_only_python_scripts_and_modules_run_by_this_interpreter_are_forked(tmp_path):
    (tmp_path / "evaluate.py").write_text("import json\nimport helper\n")
    (tmp_path / "helper.py").write_text("")
    assert forkserver.script_imports([sys.executable, "evaluate.py"], tmp_path, tmp_path) == ("json",)
    assert forkserver.script_imports(["/usr/bin/env", "evaluate.py"], tmp_path, tmp_path) is None
    assert forkserver.script_imports([sys.executable, "-c", "pass"], tmp_path, tmp_path) is None
    guarded = [sys.executable, "-m", "autoresearch.guard", "evaluate.py"]
    assert forkserver.script_imports(guarded, tmp_path, tmp_path) == ("autoresearch.guard", "json")
    assert forkserver.script_imports([sys.executable, "-m", "helper"], tmp_path, tmp_path) == ()  # beside: not early
    source = ("from __future__ import annotations\nimport os, numpy.linalg\nfrom torch import nn\n"
              "import train\nfrom sampler import batches\nfrom . import sibling\n"
              "def later():\n    import json\n")
    assert forkserver.preloads(source, {"train", "sampler"}) == ["os", "numpy.linalg", "torch"]
    assert forkserver.preloads("this is not python", set()) == []


# ---------------------------------------------------------------------------- through the runner

TRAIN = '''\
import json, os, sys, time
import marker
time.sleep(1.0)
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({"LR": 1.0, "WIDTH": 4}, f)
with open(os.path.join(os.environ["MARKS"], "trained"), "w") as f:
    f.write(repr(time.time()))
sys.exit(int(os.environ.get("FAIL", "0")))
'''

EVALUATE = '''\
import json, os, time
import marker
with open(os.path.join(os.environ["MARKS"], "evaluated"), "w") as f:
    f.write(repr(time.time()))
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "metrics.json"), "w") as f:
    json.dump({"score": 2.5}, f)
print("score: 2.5")
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    toy = build_guarded(tmp_path)
    (toy.root / "train.py").write_text(TRAIN)
    (toy.root / "evaluate.py").write_text(EVALUATE)
    toy.git("add", "-A")
    toy.git("commit", "-q", "-m", "marking scripts")
    installed, marks = tmp_path / "site", tmp_path / "marks"
    installed.mkdir()
    marks.mkdir()
    (installed / "marker.py").write_text(MARKER)
    monkeypatch.setenv("PYTHONPATH", str(installed))
    from autoresearch import runner as runner_module

    scrubbed = runner_module.scrubbed_environ
    monkeypatch.setattr(runner_module, "scrubbed_environ",  # the scrubbed environment drops MARKS and FAIL
                        lambda: {**scrubbed(), "MARKS": str(marks), "FAIL": os.environ.get("FAIL", "0")})
    return toy, marks


def mark(marks: Path, name: str):
    path = marks / name
    return float(path.read_text()) if path.exists() else None


def test_runs_share_the_servers_and_the_evaluators_imports_load_while_training_runs(toy, tmp_path, monkeypatch):
    toy, marks = toy
    target, executor = Target.open(toy.root), LocalExecutor("cpu")
    slot = executor.slots()[0]
    try:
        records = [Runner(target, executor).run(RunSpec(1, toy.root, seed, Budget.parse("1s"), 30,
                                                        tmp_path / f"run{seed}"), slot) for seed in (0, 1)]
        assert [r.state for r in records] == [RunState.OK] * 2, records[0].reason
        assert [r.metric for r in records] == [2.5, 2.5]
        assert len(importers(marks)) == 2  # one training server, one evaluation server, for both runs
        assert max(float(p.read_text()) for p in marks.glob("imported-*")) < mark(marks, "trained")
        for seed in (0, 1):  # each run's files are in its own directory; the slot's is left empty
            assert sorted(p.name for p in (tmp_path / f"run{seed}" / "out").iterdir()) == ["metrics.json",
                                                                                        "model.json"]
        assert not list(Runner(target, executor).staging(slot).iterdir())
        monkeypatch.setenv("FAIL", "1")
        (marks / "evaluated").unlink()
        failed = Runner(target, executor).run(RunSpec(1, toy.root, 2, Budget.parse("1s"), 30, tmp_path / "run2"),
                                              slot)
        assert failed.state is RunState.CRASHED and mark(marks, "evaluated") is None
        assert (tmp_path / "run2" / "out" / "model.json").exists()
    finally:
        executor.close()
    assert not list((toy.root / ".autoresearch" / "pids").glob("*.pid"))


class Commenting(Agent):
    """Proposes train.py with one more comment line each time."""

    name = "commenting"

    def propose(self, context):
        self.count = getattr(self, "count", 0) + 1
        return Proposal(f"comment {self.count}", {"train.py": TRAIN + f"# {self.count}\n"})


def test_a_pipelined_session_keeps_the_baselines_servers(toy, tmp_path):
    toy, marks = toy
    target, executor = Target.open(toy.root), LocalExecutor("cpu")
    session = Session.open(target, Commenting(), "commenting", executor, tag="t", budget=Budget.parse("1s"),
                           say=lambda text: None)
    try:
        scheduler.run(session, 2, final_test=False, pipeline=True)
        done = session.ledger.experiments("t")
    finally:
        session.close()
        executor.close()
    assert [e.description for e in done] == ["baseline", "comment 1", "comment 2"]
    assert all(run.state is RunState.OK for e in done for run in e.runs)
    assert len(importers(marks)) == 2  # the baseline's training and evaluation servers served every run


def test_a_job_without_a_preload_list_is_spawned(setup, tmp_path):
    executor, work, marks = setup
    spawned = dataclasses.replace(job(work, tmp_path, "a"), preload=None)
    code, log = run(executor, spawned)
    assert code == 0
    assert importers(marks) == [int(log.split("pid ")[1].split()[0])]  # the script's own process imported it
    assert not (tmp_path / "pids" / "slot.server.pid").exists()


def test_a_module_runs_as_under_python_m(setup, tmp_path):
    executor, work, marks = setup
    (work / "tool.py").write_text("import sys, marker\nprint(f'module {__name__} argv {sys.argv} path0 {sys.path[0]}')\n"
                                  "sys.exit(int(sys.argv[1]))\n")
    module = dataclasses.replace(job(work, tmp_path, "m"), argv=[sys.executable, "-m", "tool", "5"], preload=("marker",))
    code, log = run(executor, module)
    assert code == 5 and f"module __main__ argv ['{work / 'tool.py'}', '5'] path0 {work}" in log
    guarded = dataclasses.replace(job(work, tmp_path, "g", AUTORESEARCH_DATA=str(tmp_path / "data" / "train"),
                                      AUTORESEARCH_OUT=str(tmp_path)),
                                  argv=[sys.executable, "-m", "autoresearch.guard", "script.py", "--flag", "g"],
                                  preload=("autoresearch.guard", "marker", "numpy"))
    (tmp_path / "data" / "train").mkdir(parents=True)
    code, log = run(executor, guarded)
    assert code == 0 and "argv ['--flag', 'g']" in log, log
    assert len(importers(marks)) == 2  # one server per command line's imports: the module's, then the guard's
