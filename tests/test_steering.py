"""Steering a session while it runs: `autoresearch suggest` reaches the next proposal and is recorded with its
outcome; `autoresearch pause`, `resume` and `stop` act between experiments."""

import json
import time
from dataclasses import replace

import pytest

from autoresearch.agents.prompt import memory_text
from autoresearch.config import AgentSection
from autoresearch.records import State, Suggestion
from standin import context_for
from toy import TAG, wait_for

LR_2 = {"description": "as asked: {suggestion}", "knobs": {"LR": 2.0}}
LR_3 = {"description": "then: {suggestion}", "knobs": {"LR": 3.0}}


def run(cli, toy, steps, *extra):
    return cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), *extra)


def status(cli, toy):
    return json.loads(cli("status", "-C", toy.root, "--json").out)


# ---------------------------------------------------------------- suggestions


# one slot (the reference loop), two slots, one slot pipelined: the same steering
SLOTS = pytest.mark.parametrize("slots", [[], ["--slots", "2"], ["--pipeline"]], ids=["1slot", "2slots", "pipeline"])


@SLOTS
def test_a_suggestion_reaches_the_next_proposal_and_is_recorded_with_its_outcome(toy, cli, slots):
    assert run(cli, toy, [], "--experiments", "0").code == 0  # a tag with its baseline
    queued = cli("suggest", "-C", toy.root, "raise the learning rate towards 3")
    assert queued.code == 0 and "suggestion #1 queued for tag t" in queued.out
    assert "the next proposal considers it" in queued.out
    assert run(cli, toy, [LR_2], "--experiments", "1", *slots).code == 0
    data = status(cli, toy)
    experiment = data["experiments"][1]
    assert experiment["description"] == "as asked: raise the learning rate towards 3"  # what the agent was given
    (suggestion,) = data["suggestions"]
    assert suggestion["experiment"] == 1 and suggestion["state"] == "kept"
    assert suggestion["metric"] == pytest.approx(2.4) and suggestion["text"] == "raise the learning rate towards 3"
    text = cli("status", "-C", toy.root).out
    assert "suggestions from the human:" in text and "'raise the learning rate towards 3': taken up by #1: kept" in text


def test_suggestions_are_taken_up_one_per_proposal_oldest_first(toy, cli):
    cli("suggest", "-C", toy.root, "first idea")
    second = cli("suggest", "-C", toy.root, "second", "idea")  # several words make one suggestion
    assert "1 suggestion(s) are ahead of it" in second.out
    assert run(cli, toy, [LR_2, LR_3], "--experiments", "2").code == 0
    data = status(cli, toy)
    assert [e["description"] for e in data["experiments"][1:]] == ["as asked: first idea", "then: second idea"]
    assert [(s["text"], s["experiment"]) for s in data["suggestions"]] == [("first idea", 1), ("second idea", 2)]


@pytest.mark.parametrize("slots", [["--slots", "2"], ["--pipeline"]], ids=["2slots", "pipeline"])
def test_proposals_made_while_others_wait_take_up_different_suggestions(toy, cli, slots):
    """With proposals made ahead (several slots, the pipeline), a suggestion goes to one of them only."""
    for text in ("first idea", "second idea", "third idea"):
        cli("suggest", "-C", toy.root, text)
    assert run(cli, toy, [LR_2, LR_3, {"description": "last: {suggestion}", "knobs": {"WIDTH": 6}}],
               "--experiments", "3", *slots).code == 0
    data = status(cli, toy)
    by_index = {e["id"]: e for e in data["experiments"]}
    taken = [(s["text"], s["experiment"]) for s in data["suggestions"]]
    assert sorted(text for text, _ in taken) == ["first idea", "second idea", "third idea"]
    assert len({index for _, index in taken}) == 3  # three experiments, one suggestion each
    for text, index in taken:
        assert by_index[index]["agent"] == "scripted" and by_index[index]["description"].endswith(text)


def test_an_agent_that_does_not_read_suggestions_leaves_them_waiting(toy, cli):
    cli("suggest", "-C", toy.root, "try a wider model")
    assert cli("run", "-C", toy.root, "--tag", TAG, "--agent", "search", "--experiments", "1").code == 0
    (suggestion,) = status(cli, toy)["suggestions"]
    assert suggestion["experiment"] is None
    assert "'try a wider model': waiting for the next proposal" in cli("status", "-C", toy.root).out
    assert run(cli, toy, [LR_2], "--experiments", "1").code == 0  # the scripted agent reads it
    assert status(cli, toy)["suggestions"][0]["experiment"] == 2


def test_a_failed_proposal_leaves_the_suggestion_for_the_next_one(toy, cli):
    cli("suggest", "-C", toy.root, "an idea")
    assert run(cli, toy, [{"description": "garbage", "error": "the model answered nonsense"}, LR_2],
               "--experiments", "2").code == 0
    data = status(cli, toy)
    assert data["experiments"][1]["state"] == "rejected" and data["suggestions"][0]["experiment"] == 2


def test_the_llm_agents_see_the_suggestion_above_their_memory(toy):
    context = context_for(toy.root)
    plain = memory_text(context, AgentSection())
    assert "suggestion" not in plain.lower()
    asked = memory_text(replace(context, suggestions=(Suggestion(7, "use a cosine\nschedule"),)), AgentSection())
    assert asked.startswith("## A suggestion from the human, for this proposal")
    assert "- use a cosine schedule\n" in asked and asked.index("use a cosine") < asked.index("## Research memory")


def test_the_claude_agent_sends_the_suggestion_and_records_it_taken(toy, cli, monkeypatch):
    import anthropic  # noqa: F401  (a test dependency: missing, this test fails)
    from standin import StandIn, message, tool_use

    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    cli("suggest", "-C", toy.root, "set LR to 2.0 exactly")
    replies = [message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0")),
               message(tool_use("finish", hypothesis="LR 2.0, as suggested"))]
    with StandIn(replies) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "claude", "--base-url", server.url,
                     "--experiments", "1")
    assert result.code == 0, result.text
    first = json.dumps(server.requests[0].body)
    assert "A suggestion from the human" in first and "set LR to 2.0 exactly" in first
    assert status(cli, toy)["suggestions"][0]["experiment"] == 1


def test_suggest_before_any_research_waits_for_the_first_line(toy, cli):
    queued = cli("suggest", "-C", toy.root, "an early idea")
    assert queued.code == 0 and "queued for whichever tag runs next" in queued.out
    assert "no session is running" in queued.out
    assert run(cli, toy, [LR_2], "--experiments", "1").code == 0
    assert status(cli, toy)["experiments"][1]["description"] == "as asked: an early idea"


def test_an_empty_suggestion_is_a_usage_error(toy, cli):
    assert cli("suggest", "-C", toy.root, "  ").code == 2


# ---------------------------------------------------------------- pause, resume, stop


@SLOTS
def test_pause_holds_between_experiments_resume_goes_on_stop_ends_cleanly(make_toy, spawn_cli, tmp_path, cli, slots):
    toy = make_toy(sleep=0.3)
    log = tmp_path / "harness.log"
    steps = [{"description": f"LR {lr}", "knobs": {"LR": lr}} for lr in (1.5, 2.0, 2.5, 2.8, 2.9, 3.0, 3.1, 3.2)]
    steps += [{"description": f"WIDTH {width}", "knobs": {"WIDTH": width}} for width in range(5, 13)]
    process = spawn_cli("run", "-C", toy.root, "--tag", TAG, *toy.scripted(steps), *slots, log=log)
    assert wait_for(lambda: len(toy.experiments()) >= 2, timeout=60), log.read_text()

    paused = cli("pause", "-C", toy.root)
    assert paused.code == 0 and "pause requested" in paused.out and "no session is running" not in paused.out
    assert wait_for(lambda: "paused: waiting for resume" in log.read_text(), timeout=30), log.read_text()
    held = len(toy.experiments())
    assert not toy.unfinished()  # paused between experiments: none is running
    time.sleep(1.5)
    assert len(toy.experiments()) == held and not toy.unfinished() and process.poll() is None  # held, not ended

    assert cli("resume", "-C", toy.root).code == 0
    assert wait_for(lambda: len(toy.experiments()) > held, timeout=30), log.read_text()
    assert "resumed" in log.read_text()

    assert cli("stop", "-C", toy.root).code == 0
    assert process.wait(timeout=60) == 0, log.read_text()
    (session,) = toy.sessions()
    assert session["end_reason"].startswith("stopped on request (control file)")
    assert all(e.state.final for e in toy.experiments())
    assert len([e for e in toy.experiments() if e.agent == "scripted"]) < len(steps)
    assert toy.branch() == toy.best().commit


@SLOTS
def test_a_stop_with_no_session_running_does_not_stop_the_next_one(toy, cli, slots):
    stopped = cli("stop", "-C", toy.root)
    assert stopped.code == 0 and "no session is running on this target" in stopped.out
    assert run(cli, toy, [LR_2], "--experiments", "1", *slots).code == 0
    assert [e.state for e in toy.experiments()] == [State.BASELINE, State.KEPT]


# ---------------------------------------------------------------- the dashboard


def test_the_dashboard_shows_suggestions_with_their_outcomes_and_takes_new_ones(toy, cli):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from autoresearch.serve import create_app
    from autoresearch.target import Target

    cli("suggest", "-C", toy.root, "raise the learning rate")
    assert run(cli, toy, [LR_2], "--experiments", "1").code == 0
    client = TestClient(create_app(Target.open(toy.root)), base_url="http://127.0.0.1")
    posted = client.post("/api/suggest", json={"text": "  now widen\nthe model "}, headers={"X-Autoresearch": "control"})
    assert posted.status_code == 200 and posted.json()["text"] == "now widen the model"
    assert client.post("/api/suggest", json={"text": "no header"}).status_code == 403
    assert client.post("/api/suggest", json={"text": " "}, headers={"X-Autoresearch": "control"}).status_code == 400
    shown = client.get("/api/summary").json()["suggestions"]
    assert [(s["text"], s["experiment"], s["state"]) for s in shown] == [
        ("raise the learning rate", 1, "kept"), ("now widen the model", None, None)]
    assert shown[1]["source"] == "dashboard"
    page = client.get("/").text
    assert 'id="suggestions"' in page and "api/suggest" in page


def test_the_hybrid_gives_a_waiting_suggestion_to_its_llm_not_to_the_search(toy, cli):
    cli("suggest", "-C", toy.root, "first idea")
    cli("suggest", "-C", toy.root, "second idea")
    result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "scripted+search", "--experiments", "2",
                 *toy.scripted([LR_2, LR_3])[2:])
    assert result.code == 0, result.text
    data = status(cli, toy)
    assert [(e["agent"], e["description"]) for e in data["experiments"][1:]] == [
        ("scripted", "as asked: first idea"), ("scripted", "then: second idea")]  # the search's turn went to the LLM
