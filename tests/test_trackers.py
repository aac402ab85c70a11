"""Export of every run to MLflow (a local store) and to Weights & Biases (offline mode), read back with each
tracker's own reader: the metrics, the knob values, the experiment's state and hypothesis, the commit."""

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from toy import TAG

STEPS = [{"description": "raise LR to 2", "knobs": {"LR": 2.0}},       # kept
         {"description": "LR 1.5 instead", "knobs": {"LR": 1.5}}]      # discarded


@pytest.fixture
def researched(toy, cli):
    result = cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(STEPS), "--experiments", "2")
    assert result.code == 0, result.text
    return toy


def test_mlflow_gets_every_run_with_knobs_state_hypothesis_and_commit_once(researched, cli, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli("export", "-C", researched.root, "--mlflow", uri)
    assert result.code == 0, result.text
    assert "MLflow: 3 new runs in experiment toy/t" in result.out
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("toy/t").experiment_id])
    by_name = {run.info.run_name: run.data for run in runs}
    assert set(by_name) == {"#0 seed 0", "#1 seed 0", "#2 seed 0"}
    kept, discarded = by_name["#1 seed 0"], by_name["#2 seed 0"]
    experiments = researched.experiments()
    assert kept.metrics["score"] == pytest.approx(experiments[1].metric) and kept.metrics["run_seconds"] > 0
    assert kept.params["LR"] == "2.0" and kept.params["WIDTH"] == "4" and kept.params["seed"] == "0"
    assert kept.params["budget"] == "1s"  # runs of one seed at two budgets (a resumed line) stay apart
    assert kept.tags["autoresearch.state"] == "kept" and kept.tags["autoresearch.hypothesis"] == "raise LR to 2"
    assert kept.tags["autoresearch.commit"] == experiments[1].commit
    assert kept.tags["autoresearch.parent"] == experiments[0].commit
    assert discarded.tags["autoresearch.state"] == "discarded" and discarded.params["LR"] == "1.5"
    again = cli("export", "-C", researched.root, "--mlflow", uri)
    assert "MLflow: 0 new runs" in again.out  # each run once
    assert len(client.search_runs([client.get_experiment_by_name("toy/t").experiment_id])) == 3


def test_wandb_offline_gets_every_run_with_knobs_state_hypothesis_and_commit_once(researched, cli, tmp_path,
                                                                                 monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = cli("export", "-C", researched.root, "--wandb", "toy-project", "--wandb-mode", "offline")
    assert result.code == 0, result.text
    assert "Weights & Biases: 3 new runs in project toy-project, group t" in result.out
    found = {}
    for directory in glob.glob(str(tmp_path / "wandb" / "offline-run-*")):
        records = [json.loads(line) for line in subprocess.run(
            [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", directory],
            capture_output=True, text=True, check=True, timeout=120).stdout.splitlines() if line.startswith("{")]
        run = next(r["run"] for r in records if r["type"] == "run")
        summary = {}
        for record in records:
            if record["type"] == "summary":
                summary.update(record["summary"].get("update", {}))
        found[run["display_name"]] = (run, summary)
    assert set(found) == {"#0 seed 0", "#1 seed 0", "#2 seed 0"}
    run, summary = found["#1 seed 0"]
    experiments = researched.experiments()
    assert run["project"] == "toy-project" and run["run_group"] == TAG and run["notes"] == "raise LR to 2"
    assert run["config"]["update"]["LR"] == 2.0 and run["config"]["update"]["seed"] == 0
    assert run["config"]["update"]["budget"] == "1s"
    assert summary["score"] == pytest.approx(experiments[1].metric)
    assert summary["state"] == "kept" and summary["commit"] == experiments[1].commit
    assert found["#2 seed 0"][1]["state"] == "discarded"
    again = cli("export", "-C", researched.root, "--wandb", "toy-project", "--wandb-mode", "offline")
    assert "Weights & Biases: 0 new runs" in again.out
    assert len(glob.glob(str(tmp_path / "wandb" / "offline-run-*"))) == 3


def test_a_missing_tracker_package_says_which_extra_to_install(researched, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    result = cli("export", "-C", researched.root, "--mlflow", "sqlite:///x.db")
    assert result.code == 2 and "pip install 'autoresearch[mlflow]'" in result.err
