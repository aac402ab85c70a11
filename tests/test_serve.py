"""The dashboard's JSON endpoints, its guards (local names, token, control header), and a real uvicorn server
pausing and stopping a real session."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from autoresearch import control
from autoresearch.serve import ServeError, check_bind, create_app
from autoresearch.target import Target
from researched import STATES, build_researched, with_one_in_flight
from toy import TAG, run_cli, wait_for
from webserver import Server

LOCAL = "http://127.0.0.1"
CONTROL = {"X-Autoresearch": "control"}


@pytest.fixture(scope="module")
def researched(tmp_path_factory):
    return build_researched(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def client(researched):
    return TestClient(create_app(Target.open(researched.root)), base_url=LOCAL)


def get(client, path, **options):
    response = client.get(path, **options)
    assert response.status_code == 200, response.text
    return response.json()


def ids(data):
    return [e["id"] for e in data["experiments"]]


# ---------------------------------------------------------------------------- endpoints


def test_page_is_one_self_contained_html_file(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "<script src" not in response.text and "<link rel=\"stylesheet\"" not in response.text


def test_summary(client):
    data = get(client, "/api/summary")
    assert (data["tag"], data["target"], data["metric"]) == (TAG, "toy", {"name": "score", "goal": "minimize"})
    assert (data["baseline"]["id"], data["best"]["id"]) == (0, 7)
    assert data["best"]["metric"] == pytest.approx(1.99) and data["improvement"] == pytest.approx(3.4)
    assert data["counts"]["kept"] == 2 and data["counts"]["rejected"] == 2 and data["experiments"] == 9
    assert data["session"]["alive"] is False and data["cost"] is None


def test_experiments_list_every_state_without_diffs(client):
    data = get(client, "/api/experiments")
    assert [e["state"] for e in data["experiments"]] == STATES
    assert data["agents"] == ["harness", "scripted"]
    assert "diff" not in data["experiments"][1]
    kept = data["experiments"][1]
    assert (kept["seeds"], kept["parent_id"]) == (6, 0)
    assert kept["effect"] == pytest.approx(2.99333, abs=1e-5) and kept["effect_se"] == pytest.approx(0.01453, abs=1e-4)


@pytest.mark.parametrize("query, expected", [
    ("state=kept", [1, 7]),
    ("state=crashed,timeout", [3, 4]),
    ("agent=harness", [0]),
    ("q=WIDEN", [7]),
    ("q=scorer.py", [5]),              # matches the diff and the reason
    ("state=rejected&q=garbage", [6]),
    ("state=kept&agent=harness", []),
])
def test_experiment_filters(client, query, expected):
    assert ids(get(client, f"/api/experiments?{query}")) == expected


def test_one_experiment_with_its_diff_and_runs(client):
    data = get(client, "/api/experiments/1")
    assert data["description"] == "raise LR to 2" and "+LR = 2.0" in data["diff"]
    assert [(r["seed"], r["state"]) for r in data["runs"]] == [(seed, "ok") for seed in range(6)]  # 3 confirm a jump
    assert client.get("/api/experiments/99").status_code == 404


def test_log_tail_of_a_finished_experiment(client):
    data = get(client, "/api/log/2?tail=2")
    assert not data["running"] and data["source"].endswith("00002/seed2/log.txt")
    assert data["lines"][-1].startswith("score: 3.6")
    assert len(data["lines"]) == 2
    assert client.get("/api/log/99").status_code == 404


def test_slots_when_idle(client):
    assert get(client, "/api/slots") == {"slots": [{"slot": "cpu0", "busy": False}]}


def test_running_experiment_shows_in_slots_and_log(researched, tmp_path):
    target, ledger, _, log = with_one_in_flight(
        researched, tmp_path / "copy", "==> python train.py\nstep    10 |  40.0% | loss 1.2500 | lr x1.00 | 9,000 tok/s\n")
    ledger.close()
    client = TestClient(create_app(target), base_url=LOCAL)
    (slot,) = get(client, "/api/slots")["slots"]
    assert (slot["slot"], slot["id"], slot["progress"]["fraction"], slot["progress"]["loss"]) == ("cpu0", 9, 0.4, 1.25)
    assert get(client, "/api/log/9?tail=1") == {"id": 9, "state": "running", "running": True, "source": str(log),
                                                "lines": ["step    10 |  40.0% | loss 1.2500 | lr x1.00 | 9,000 tok/s"]}
    with log.open("a") as handle:
        handle.write("step    20 |  80.0% | loss 1.1000 | lr x1.00 | 9,100 tok/s\n")
    assert get(client, "/api/log/9?tail=1")["lines"][0].startswith("step    20")
    assert get(client, "/api/experiments?state=running")["experiments"][0]["id"] == 9


def test_before_any_research(toy):
    client = TestClient(create_app(Target.open(toy.root)), base_url=LOCAL)
    assert get(client, "/api/summary")["tag"] is None
    assert get(client, "/api/experiments") == {"experiments": []}
    assert get(client, "/api/slots") == {"slots": []}
    assert not (toy.root / ".autoresearch" / "ledger.sqlite").exists()  # a view never creates the ledger


# ---------------------------------------------------------------------------- control and guards


def test_control_writes_the_control_file(researched, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(researched.root, root)
    client = TestClient(create_app(Target.open(root)), base_url=LOCAL)
    for command in ("pause", "resume", "stop"):
        response = client.post(f"/api/control/{command}", headers=CONTROL)
        assert response.status_code == 200, response.text
        assert control.read(root / ".autoresearch")["command"] == command
        assert response.json()["command"] == command
    assert client.post("/api/control/explode", headers=CONTROL).status_code == 404


def test_control_needs_its_header(client, researched):
    response = client.post("/api/control/stop")
    assert response.status_code == 403 and "X-Autoresearch" in response.json()["error"]
    assert control.read(researched.root / ".autoresearch")["command"] == "resume"


def test_only_local_names_without_a_token(client):
    assert client.get("/api/summary", headers={"host": "attacker.example:8765"}).status_code == 403
    assert client.get("/api/summary", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/api/summary", headers={"host": "[::1]:8765"}).status_code == 200


def test_token_is_checked_on_every_request(researched):
    client = TestClient(create_app(Target.open(researched.root), token="s3cret"), base_url="http://10.1.2.3")
    for path in ("/", "/api/summary", "/api/experiments", "/api/experiments/1", "/api/log/1", "/api/slots"):
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/summary?token=s3cret").status_code == 200
    assert client.post("/api/control/stop", headers=CONTROL).status_code == 401


def test_binding_off_localhost_needs_a_token(researched, monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_TOKEN", raising=False)
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(ServeError, match="--token"):
        check_bind("0.0.0.0", None)
    result = run_cli("serve", "-C", researched.root, "--host", "0.0.0.0", "--port", "1")
    assert result.code == 2 and "pass --token" in result.err


# ---------------------------------------------------------------------------- a real server and a real session


def test_dashboard_pauses_resumes_and_stops_a_real_session(make_toy, spawn_cli, tmp_path):
    toy = make_toy(sleep=0.3)
    steps = [{"description": f"LR {lr}", "knobs": {"LR": lr}} for lr in (1.5, 2.0, 2.5, 2.8, 2.9, 3.1, 3.2, 3.3, 3.4)]
    log = tmp_path / "session.log"
    ledger = toy.root / ".autoresearch" / "ledger.sqlite"
    with Server(create_app(Target.open(toy.root))) as server:
        process = spawn_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), log=log)
        assert wait_for(lambda: ledger.exists() and len(toy.experiments()) >= 2, timeout=60)
        assert httpx.get(f"{server.url}/api/summary").json()["session"]["alive"] is True
        assert httpx.post(f"{server.url}/api/control/pause", headers=CONTROL).status_code == 200
        assert wait_for(lambda: "paused: waiting for resume" in log.read_text(), timeout=30)
        assert httpx.get(f"{server.url}/api/summary").json()["session"]["control"] == "pause"
        held = len(toy.experiments())
        time.sleep(0.8)
        assert len(toy.experiments()) == held
        assert httpx.post(f"{server.url}/api/control/resume", headers=CONTROL).status_code == 200
        assert wait_for(lambda: len(toy.experiments()) > held, timeout=30)
        assert httpx.post(f"{server.url}/api/control/stop", headers=CONTROL).status_code == 200
        assert process.wait(timeout=30) == 0
        summary = httpx.get(f"{server.url}/api/summary").json()
    assert summary["session"]["alive"] is False
    assert summary["session"]["end_reason"].startswith("stopped on request")
    assert "resumed" in log.read_text()
    assert len(toy.experiments()) < len(steps) + 1


def test_real_server_with_a_token_off_localhost_name(researched):
    with Server(create_app(Target.open(researched.root), token="tok")) as server:
        assert httpx.get(f"{server.url}/api/summary").status_code == 401
        assert httpx.get(f"{server.url}/api/summary", headers={"Authorization": "Bearer tok"}).json()["tag"] == TAG
