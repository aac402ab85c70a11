"""The loop end to end on the real built-in GPT target: init, prepare, run, status, export, resume.

Real training (PyTorch on the CPU) under a fixed-step budget, so the numbers are deterministic.
"""

import json
import subprocess

import pytest

from toy import quick_judge, run_cli

pytestmark = pytest.mark.slow

STEPS = "12steps"


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e") / "research"
    assert run_cli("init", root).code == 0
    config = root / "autoresearch.toml"  # a quicker judge: two calibration runs, at most two runs per change
    config.write_text(quick_judge(config.read_text(), final_test_seeds=2))
    subprocess.run(["git", "-C", str(root), "commit", "-qam", "a quicker judge"], check=True)
    prepared = run_cli("prepare", "-C", root, "--data", "stdlib")
    assert prepared.code == 0, prepared.text
    script = root.parent / "script.json"
    script.write_text(json.dumps([
        {"description": "higher Muon LR", "knobs": {"MATRIX_LR": 0.08}},
        {"description": "much lower Muon LR", "knobs": {"MATRIX_LR": 0.004}},
        {"description": "break the evaluator", "delete": ["evaluate.py"]},
        {"description": "longer warmdown", "knobs": {"WARMDOWN_FRAC": 0.8}},
        {"description": "peek at the next token", "replace": [
            {"file": "train.py", "old": "is_causal=True", "new": "is_causal=False"}]},
    ]))
    first = run_cli("run", "-C", root, "--tag", "e2e", "--budget", STEPS, "--experiments", "3",
                    "--agent", "scripted", "--agent-option", f"script={script}")
    assert first.code == 0, first.text
    resumed = run_cli("run", "-C", root, "--budget", STEPS, "--experiments", "2",
                      "--agent", "scripted", "--agent-option", f"script={script}")
    assert resumed.code == 0, resumed.text
    return root


def status(root, *args):
    result = run_cli("status", "-C", root, "--json", *args)
    assert result.code == 0, result.text
    return json.loads(result.out)


def test_the_baseline_trains_and_is_scored_by_the_evaluator(target):
    baseline = status(target)["baseline"]
    assert 1.0 < baseline["metric"] < 8.0  # better than a uniform guess over bytes (8 bits), a real model
    assert baseline["runs"][0]["state"] == "ok"


def test_every_proposal_is_recorded_once_with_its_outcome(target):
    experiments = status(target)["experiments"]
    assert [e["description"] for e in experiments] == [
        "baseline", "higher Muon LR", "much lower Muon LR", "break the evaluator", "longer warmdown",
        "peek at the next token"]
    states = [e["state"] for e in experiments]
    assert states[0] == "baseline" and states[3] == "rejected"
    assert all(state in ("kept", "discarded") for state in states[1:3] + states[4:5])


def test_a_model_that_looks_ahead_is_rejected_by_the_evaluator(target):
    cheat = status(target)["experiments"][5]
    assert cheat["state"] == "rejected"
    assert "the evaluator rejected the model" in cheat["reason"] and "not causal" in cheat["reason"]
    assert cheat["runs"][0]["state"] == "rejected"
    flags = status(target)["flags"]
    assert any(f["index"] == 5 and f["kind"] == "evaluator" for f in flags)


def test_the_branch_holds_the_best_commit(target):
    best = status(target)["best"]
    branch = subprocess.run(["git", "-C", str(target), "rev-parse", "autoresearch/e2e"], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert branch == best["commit"]


def test_a_fixed_step_budget_is_deterministic(target):
    again = run_cli("run", "-C", target, "--tag", "again", "--budget", STEPS, "--experiments", "0")
    assert again.code == 0, again.text
    assert status(target, "--tag", "again")["baseline"]["metric"] == status(target, "--tag", "e2e")["baseline"]["metric"]


def test_export_writes_results_tsv(target, tmp_path):
    out = tmp_path / "results.tsv"
    assert run_cli("export", "-C", target, "--tag", "e2e", "--tsv", out).code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert len(lines) == 7
    assert lines[4].split("\t")[3] == "crash" and "rejected" in lines[4]


def test_the_demo_runs_offline_end_to_end(tmp_path):
    # The README's first command (`make demo`), shortened: the same code path with a 4-step budget and 2 experiments.
    result = run_cli("demo", "-C", tmp_path, "--dir", "demo", "--experiments", "2", "--budget", "4steps",
                     "--data", "stdlib")
    assert result.code == 0, result.text
    assert "kept chain" in result.out and "autoresearch/demo" in result.out
    from autoresearch.ledger import Ledger

    experiments = Ledger(tmp_path / "demo" / ".autoresearch" / "ledger.sqlite").experiments("demo")
    assert [e.index for e in experiments] == [0, 1, 2]
    assert experiments[0].state.value == "baseline" and len(experiments[0].runs) == 3  # the demo's quicker judge
    assert all(e.state.value in ("kept", "discarded") for e in experiments[1:])
    assert experiments[1].description.startswith("MATRIX_LR 0.002 -> ")  # below its range: moved first, alone
    report = tmp_path / "demo" / ".autoresearch" / "report" / "report.html"
    assert report.exists() and f"open {report.resolve().as_uri()}" in result.out
    assert " serve -C " in result.out and "http://127.0.0.1:8765" in result.out
