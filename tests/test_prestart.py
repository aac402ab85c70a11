"""The evaluator started with training (prestart.py): its installed imports load while training runs, it runs
only on the harness's word, after training, and never when training fails."""

from __future__ import annotations

import os
import time

import pytest

from autoresearch import prestart
from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor
from autoresearch.records import RunState
from autoresearch.runner import Runner, RunSpec
from autoresearch.target import Target
from toy import build_guarded

# An "installed" module (on PYTHONPATH, not beside the scripts) that notes when it was imported.
MARKER = '''\
import os, time
with open(os.environ["MARKS"] + "/imported", "w") as f:
    f.write(repr(time.time()))
'''

TRAIN = '''\
import json, os, sys, time
time.sleep(1.0)
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "model.json"), "w") as f:
    json.dump({"LR": 1.0, "WIDTH": 4}, f)
with open(os.environ["MARKS"] + "/trained", "w") as f:
    f.write(repr(time.time()))
sys.exit(int(os.environ.get("FAIL", "0")))
'''

EVALUATE = '''\
import json
import os
import sys
import time

import marker  # installed: loaded while training runs
from helper import VALUE  # beside the script: loaded on the word

with open(os.environ["MARKS"] + "/evaluated", "w") as f:
    f.write(repr(time.time()))
with open(os.path.join(os.environ["AUTORESEARCH_OUT"], "metrics.json"), "w") as f:
    json.dump({"score": VALUE}, f)
print(f"argv: {sys.argv[1:]} stdin: {sys.stdin.read()!r} main: {__name__}")
print(f"score: {VALUE}")
'''


@pytest.fixture
def target(tmp_path, monkeypatch):
    toy = build_guarded(tmp_path)
    (toy.root / "train.py").write_text(TRAIN)
    (toy.root / "evaluate.py").write_text(EVALUATE)
    (toy.root / "helper.py").write_text("VALUE = 2.5\n")
    toy.git("add", "-A")
    toy.git("commit", "-q", "-m", "marking scripts")
    installed, marks = tmp_path / "site", tmp_path / "marks"
    installed.mkdir()
    marks.mkdir()
    (installed / "marker.py").write_text(MARKER)
    monkeypatch.setenv("PYTHONPATH", str(installed))
    monkeypatch.setenv("MARKS", str(marks))  # the scrubbed environment drops it: passed on by hand below
    return toy, marks


def run(toy, tmp_path, monkeypatch, **env):
    from autoresearch import runner as runner_module

    scrubbed = runner_module.scrubbed_environ
    monkeypatch.setattr(runner_module, "scrubbed_environ",
                        lambda: {**scrubbed(), "MARKS": os.environ["MARKS"], **env})
    spec = RunSpec(1, toy.root, 0, Budget.parse("1s"), 30, tmp_path / "run")
    executor = LocalExecutor("cpu")
    return Runner(Target.open(toy.root), executor).run(spec, executor.slots()[0])


def mark(marks, name):
    path = marks / name
    return float(path.read_text()) if path.exists() else None


def test_the_evaluators_installed_imports_load_during_training_and_it_runs_after(target, tmp_path, monkeypatch):
    toy, marks = target
    record = run(toy, tmp_path, monkeypatch)
    assert record.state is RunState.OK, record.reason
    assert record.metric == 2.5
    assert mark(marks, "imported") < mark(marks, "trained") < mark(marks, "evaluated")
    assert "argv: [] stdin: '' main: __main__" in record.log_tail  # as `python evaluate.py` would see it


def test_a_failed_training_never_runs_the_held_evaluator(target, tmp_path, monkeypatch):
    toy, marks = target
    record = run(toy, tmp_path, monkeypatch, FAIL="1")
    assert record.state is RunState.CRASHED
    assert mark(marks, "imported") is not None
    assert mark(marks, "evaluated") is None
    time.sleep(0.2)
    assert not list((toy.root / ".autoresearch" / "pids").glob("*.pid"))


def test_only_top_level_imports_of_modules_not_beside_the_script_are_preloaded():
    source = ("from __future__ import annotations\nimport os, numpy.linalg\nfrom torch import nn\n"
              "import train\nfrom sampler import batches\nfrom . import sibling\n"
              "def later():\n    import json\n")
    assert prestart.preloads(source, {"train", "sampler"}) == ["os", "numpy.linalg", "torch"]
    assert prestart.preloads("this is not python", set()) == []


def test_only_a_python_script_run_by_this_interpreter_is_started_early(tmp_path):
    import sys

    (tmp_path / "evaluate.py").write_text("import json\n")
    assert prestart.command([sys.executable, "evaluate.py"], tmp_path, tmp_path)[-1] == "evaluate.py"
    assert prestart.command(["/usr/bin/env", "evaluate.py"], tmp_path, tmp_path) is None
    assert prestart.command([sys.executable, "-m", "evaluate"], tmp_path, tmp_path) is None
