"""torch.compile's cache across runs (runner.compile_cache): shared by the validation runs of a machine, so a graph
compiles once per machine; private and empty for runs on the held-out test split, so that what one run planted there
never runs in them. Real runs through the Runner, in the jail where this machine has one."""

import json

import pytest

from autoresearch.budget import Budget
from autoresearch.executor import LocalExecutor, Slot
from autoresearch.records import RunState
from autoresearch.runner import PRIVATE_COMPILE_CACHE, Runner, RunSpec
from autoresearch.target import Target

SLOT = Slot("cpu0", "cpu", 1)

# Plants a file where the next run's compiler would look, and reports what it found there.
PLANT = '''\
import json, os
cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
seen = sorted(os.listdir(cache)) if os.path.isdir(cache) else None
os.makedirs(cache, exist_ok=True)
with open(os.path.join(cache, "planted.py"), "w") as f:
    f.write("raise SystemExit('planted code ran')\\n")
print("found: " + json.dumps({"cache": cache, "seen": seen}))
print("score: 1.0")
'''

# Compiles a small function and reports whether inductor's FX graph cache had it.
COMPILE = '''\
import json, os, torch
from torch._dynamo.utils import counters
torch.compile(lambda x: (x.sin() + 1).square())(torch.randn(8))
print("found: " + json.dumps({"cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], **counters["inductor"]}))
print("score: 1.0")
'''


def run(toy, train: str, seed: int, split: str = "val") -> dict:
    (toy.root / "train.py").write_text(train)
    runner = Runner(Target.open(toy.root), LocalExecutor("cpu"))
    spec = RunSpec(experiment_id=0, worktree=toy.root, seed=seed, budget=Budget.parse("1s"), timeout=300,
                   directory=toy.root / ".autoresearch" / "runs" / f"{split}-{seed}", split=split)
    record = runner.run(spec, SLOT)
    assert record.state is RunState.OK, record.log_tail
    assert not (spec.directory / "out" / PRIVATE_COMPILE_CACHE).exists()  # removed when the run ended
    found = [line for line in record.log_tail.splitlines() if line.startswith("found: ")]
    return json.loads(found[-1].removeprefix("found: "))


def test_validation_runs_share_the_cache_and_held_out_runs_never_see_what_a_run_planted(toy, monkeypatch):
    cache = toy.root / ".autoresearch" / "cache"  # inside the target, which the jail mounts read-only
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # torch.compile in this process sets it (the default)
    first = run(toy, PLANT, seed=0)
    assert first["cache"] == str(cache / "torch-compile") and (cache / "torch-compile" / "planted.py").exists()
    assert "planted.py" in run(toy, PLANT, seed=1)["seen"]  # the next validation run finds it: shared
    held_out = run(toy, PLANT, seed=0, split="test")
    assert held_out["cache"] != first["cache"] and held_out["seen"] in (None, [])


@pytest.mark.slow
def test_a_compiled_graph_is_loaded_from_the_cache_by_the_next_run(toy, monkeypatch, tmp_path):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    """Also: a run that compiled exits (a forked run once waited forever for the compiler's thread pool)."""
    first, second = run(toy, COMPILE, seed=0), run(toy, COMPILE, seed=1)
    assert first.get("fxgraph_cache_miss") and not first.get("fxgraph_cache_hit")
    assert second.get("fxgraph_cache_hit") and not second.get("fxgraph_cache_miss")
