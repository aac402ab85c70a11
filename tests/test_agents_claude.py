"""The claude agent: the real `anthropic` SDK against a local Messages API stand-in, scripted tool turns."""

import json

import pytest

import anthropic  # noqa: F401  (the real SDK is a test dependency: missing, these tests fail)

from autoresearch.agents import AgentError, create
from autoresearch.agents.claude import DEFAULT_MODEL
from autoresearch.config import AgentSection
from autoresearch.records import Experiment, State
from standin import StandIn, context_for, error, message, text, tool_results, tool_use
from toy import TAG

USAGE = {"input_tokens": 1000, "output_tokens": 200, "cache_read_input_tokens": 5000,
         "cache_creation_input_tokens": 2000}
# claude-opus-5-5 at $4 in, $20 out, $0.20 cache read, $5 cache write per million tokens, three responses
COST = 3 * (1000 * 4 + 200 * 20 + 5000 * 0.2 + 2000 * 5) / 1e6

RAISE_LR = [message(tool_use("read_file", path="train.py"), usage=USAGE),
            message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0"), usage=USAGE),
            message(tool_use("finish", hypothesis="raise LR to 2: the toy's optimum is at 3"), usage=USAGE)]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def agent(server, **settings):
    return create("claude", settings=AgentSection(base_url=server.url, max_retries=2, **settings))


def run(cli, toy, server, *extra):
    return cli("run", "-C", toy.root, "--tag", TAG, "--agent", "claude", "--base-url", server.url, *extra)


# ---------------------------------------------------------------- end to end


def test_a_multi_turn_edit_lands_is_committed_run_and_kept(toy, cli):
    with StandIn(list(RAISE_LR)) as server:
        result = run(cli, toy, server, "--experiments", "1")
    assert result.code == 0, result.text
    baseline, experiment = toy.experiments()
    assert (experiment.state, experiment.agent) == (State.KEPT, "claude")
    assert experiment.description == "raise LR to 2: the toy's optimum is at 3"
    assert experiment.metric == pytest.approx(2.4)
    assert "+LR = 2.0" in experiment.diff
    assert "LR = 2.0" in toy.git("show", f"autoresearch/{TAG}:train.py")


def test_the_sdk_sends_the_key_the_model_and_the_tools(toy):
    with StandIn(list(RAISE_LR)) as server:
        agent(server).propose(context_for(toy.root))
    first = server.requests[0]
    assert first.path.startswith("/v1/messages")
    assert first.headers.get("authorization") == "Bearer test-key"
    assert first.body["model"] == DEFAULT_MODEL
    assert [t["name"] for t in first.body["tools"]] == ["read_file", "list_files", "replace", "view_memory", "finish"]
    assert "temperature" not in first.body


def test_the_stable_prefix_is_marked_for_prompt_caching(toy):
    with StandIn(list(RAISE_LR)) as server:
        agent(server).propose(context_for(toy.root))
    body = server.requests[0].body
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "Make the score as low as you can." in body["system"][-1]["text"]  # the program
    files, rest = body["messages"][0]["content"]
    assert files["cache_control"] == {"type": "ephemeral"} and "LR = 1.0" in files["text"]
    assert "Research memory" in rest["text"] and "cache_control" not in rest
    assert body["cache_control"] == {"type": "ephemeral"}  # the growing conversation, turn to turn


def test_tool_results_go_back_to_the_model(toy):
    script = [message(tool_use("read_file", path="train.py", start=5, end=6)), *RAISE_LR[1:]]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    read, replaced = tool_results(server.requests[2])
    assert read["content"] == ("train.py, lines 5-6 of 16:\nLR = 1.0     # learning rate: best at 3\n"
                               "WIDTH = 4    # width: best at 8\n") and not read["is_error"]
    assert "replaced in train.py at line 5" in replaced["content"]
    assert proposal.writes["train.py"].count("LR = 2.0") == 1


def test_thinking_blocks_are_passed_back_unchanged(toy):
    thinking = {"type": "thinking", "thinking": "", "signature": "sig-123"}
    script = [message(thinking, tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="raise LR"))]
    with StandIn(script) as server:
        agent(server).propose(context_for(toy.root))
    assistant = server.requests[1].body["messages"][1]
    assert assistant["role"] == "assistant" and assistant["content"][0] == thinking


# ---------------------------------------------------------------- edits that do not apply


def test_a_replace_that_does_not_apply_is_shown_to_the_model_and_changes_nothing(toy):
    script = [message(tool_use("replace", path="train.py", old="LR = 7.0", new="LR = 2.0")),
              message(tool_use("replace", path="train.py", old="WIDTH", new="W")),
              message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="raise LR"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    missing, ambiguous, done = tool_results(server.requests[3])
    assert missing["is_error"] and "was not found in train.py" in missing["content"]
    assert "closest line in the file is: 'LR = 1.0     # learning rate: best at 3'" in missing["content"]
    assert ambiguous["is_error"] and "occurs 2 times" in ambiguous["content"]
    assert not done["is_error"]
    assert "W = 4" not in proposal.writes["train.py"] and "LR = 2.0" in proposal.writes["train.py"]


@pytest.mark.parametrize("path, says", [
    ("scorer.py", "refused: scorer.py is protected"),
    ("autoresearch.toml", "refused: autoresearch.toml is protected"),
    ("notes.txt", "refused: notes.txt is not an editable file; the editable files are train.py, lib/*.py"),
    ("../outside.py", "is not a path inside the repository"),
])
def test_an_edit_outside_the_editable_files_is_refused_inside_the_tool(toy, path, says):
    script = [message(tool_use("replace", path=path, old="", new="PENALTY = -100.0\n")),
              message(tool_use("finish", hypothesis="cheat")),
              message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="raise LR"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    refused, empty = tool_results(server.requests[2])
    assert refused["is_error"] and says in refused["content"]
    assert empty["is_error"] and "nothing changed yet" in empty["content"]
    assert set(proposal.writes) == {"train.py"}


def test_a_new_editable_file_can_be_created(toy):
    script = [message(tool_use("replace", path="lib/util.py", old="", new="SCALE = 2\n")),
              message(tool_use("finish", hypothesis="a helper"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    assert proposal.writes == {"lib/util.py": "SCALE = 2\n"}


def test_a_python_file_that_does_not_parse_is_sent_back_before_finishing(toy):
    script = [message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = = 1.0")),
              message(tool_use("finish", hypothesis="broken")),
              message(tool_use("replace", path="train.py", old="LR = = 1.0", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="fixed"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    assert "train.py does not parse: invalid syntax (line 5)" in tool_results(server.requests[2])[1]["content"]
    assert proposal.description == "fixed"


def test_a_change_that_repeats_a_discarded_experiment_is_refused(toy):
    diff = "--- a/train.py\n+++ b/train.py\n@@ -5 +5 @@\n-LR = 1.0     # learning rate: best at 3\n" \
           "+LR = 0.5     # learning rate: best at 3\n"
    tried = Experiment(id=2, tag="t", index=1, state=State.DISCARDED, parent="c0", commit="c1",
                       description="lower LR", agent="claude", diff=diff, metric=7.65)
    script = [message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 0.5")),
              message(tool_use("finish", hypothesis="a smaller step size")),
              message(tool_use("replace", path="train.py", old="LR = 0.5", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="a larger step size"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root, [tried]))
    refused = tool_results(server.requests[2])[1]
    assert refused["is_error"] and "repeats experiment #1 (discarded: lower LR)" in refused["content"]
    assert proposal.description == "a larger step size"


def test_a_hypothesis_like_an_earlier_one_is_questioned_once(toy):
    tried = Experiment(id=2, tag="t", index=1, state=State.DISCARDED, parent="c0", commit="c1",
                       description="double the width of the model", agent="claude", diff="+WIDTH = 8\n")
    script = [message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0")),
              message(tool_use("finish", hypothesis="Double the width of the model.")),
              message(tool_use("finish", hypothesis="double the width of the model"))]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root, [tried]))
    assert "reads like experiment #1" in tool_results(server.requests[2])[-1]["content"]
    assert proposal.description == "double the width of the model"


# ---------------------------------------------------------------- failures


def test_garbage_output_ends_in_an_agent_error_with_its_cost(toy):
    script = [message(text("I think we should lower the learning rate.")) for _ in range(3)]
    with StandIn(script) as server, pytest.raises(AgentError, match="did not finish within 3 tool turns") as caught:
        agent(server, max_turns=3).propose(context_for(toy.root))
    assert "Plain text does nothing here" in server.requests[1].body["messages"][-1]["content"]
    assert caught.value.usage.requests == 3 and caught.value.usage.output_tokens == 15


def test_a_body_that_is_not_json_is_an_agent_error(toy):
    from standin import Reply

    with StandIn([Reply("<html>502 bad gateway</html>")]) as server, pytest.raises(AgentError):
        agent(server).propose(context_for(toy.root))


def test_rate_limits_and_overload_are_retried_then_succeed(toy):
    script = [error(429, "rate_limit_error", "slow down", retry_after_ms="10"),
              error(529, "overloaded_error", "overloaded", retry_after_ms="10"), *RAISE_LR]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    assert len(server.requests) == 5
    assert proposal.description.startswith("raise LR to 2")


def test_a_rate_limit_that_outlasts_the_retries_is_an_agent_error(toy):
    script = [error(429, "rate_limit_error", "slow down", retry_after_ms="10") for _ in range(3)]
    with StandIn(script) as server, pytest.raises(AgentError, match=r"rate limit \(429\), after up to 2 retries"):
        agent(server).propose(context_for(toy.root))
    assert len(server.requests) == 3


def test_agent_errors_are_recorded_and_the_loop_goes_on(toy, cli):
    script = [error(500, "api_error", "boom", x_should_retry="false"), *RAISE_LR]
    with StandIn(script) as server:
        result = run(cli, toy, server, "--experiments", "2", "--agent-option", "max_retries=0")
    assert result.code == 0, result.text
    _, failed, kept = toy.experiments()
    assert failed.state is State.REJECTED
    assert failed.reason == "agent error: the Anthropic API server error (500), after up to 0 retries: boom"
    assert kept.state is State.KEPT


def test_consecutive_agent_errors_pause_the_session(toy, cli):
    script = [error(401, "authentication_error", "invalid x-api-key") for _ in range(6)]
    with StandIn(script) as server:
        result = run(cli, toy, server)
    assert result.code == 1
    assert "paused: the agent failed 5 times in a row (agent error: the Anthropic API refused the API key (401)" \
           in result.out


def test_a_missing_api_key_is_a_clear_error(toy, cli, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    result = cli("run", "-C", toy.root, "--agent", "claude")
    assert result.code == 2
    assert "ANTHROPIC_API_KEY is not set" in result.err
    assert not (toy.root / ".autoresearch" / "ledger.sqlite").exists()  # refused before any session started


# ---------------------------------------------------------------- costs


def test_tokens_and_dollars_are_recorded_per_proposal_and_shown_by_status(toy, cli):
    with StandIn(list(RAISE_LR)) as server:
        assert run(cli, toy, server, "--experiments", "1").code == 0
    ledger = toy.ledger()
    try:
        (usage,) = ledger.agent_costs(TAG).values()
    finally:
        ledger.close()
    assert (usage.model, usage.requests) == (DEFAULT_MODEL, 3)
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == \
           (3000, 600, 15000, 6000)
    assert usage.cost_usd == pytest.approx(COST)
    data = json.loads(cli("status", "-C", toy.root, "--json").out)
    assert data["agent_cost"]["cost_usd"] == pytest.approx(COST)
    assert data["experiments"][1]["agent_cost"]["output_tokens"] == 600
    assert f"agent cost: ${COST:.4f}" in cli("status", "-C", toy.root).out


def test_an_unknown_model_records_tokens_but_no_dollars(toy, cli):
    with StandIn(list(RAISE_LR)) as server:
        assert run(cli, toy, server, "--experiments", "1", "--model", "my-finetune").code == 0
    assert server.requests[0].body["model"] == "my-finetune"
    spend = json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]
    assert spend["cost_usd"] is None and spend["output_tokens"] == 600 and spend["unpriced_proposals"] == 1
    assert "agent cost: unknown (1 proposals by a model with no price)" in cli("status", "-C", toy.root).out


def test_the_cost_cap_ends_the_session_cleanly(toy, cli):
    with StandIn(RAISE_LR * 3) as server:
        result = run(cli, toy, server, "--experiments", "3", "--max-cost", "0.05")
    assert result.code == 0, result.text
    assert f"stopped: --max-cost $0.0500 reached: the agent spent ${COST:.4f} in this session" in result.out
    assert len(toy.experiments()) == 2
    assert toy.sessions()[0]["end_reason"].startswith("stopped: --max-cost")


def test_the_token_cap_ends_the_session_cleanly(toy, cli):
    with StandIn(RAISE_LR * 3) as server:
        result = run(cli, toy, server, "--max-tokens", "1000")
    assert result.code == 0, result.text
    assert "stopped: --max-tokens 1000 reached: the agent used 24,600 tokens in this session" in result.out
    assert len(toy.experiments()) == 2


def test_a_cost_cap_with_an_unknown_price_stops_rather_than_overspend(toy, cli):
    with StandIn(RAISE_LR * 3) as server:
        result = run(cli, toy, server, "--max-cost", "5", "--model", "my-finetune")
    assert result.code == 0
    assert "--max-cost cannot be enforced: the price of my-finetune is unknown" in result.out
    assert len(toy.experiments()) == 2


def test_a_price_from_the_config_overrides_the_table(make_toy, cli):
    from toy import CONFIG

    toy = make_toy(config=CONFIG + '\n[agent.prices.my-finetune]\ninput = 1.0\noutput = 2.0\n')
    with StandIn(list(RAISE_LR)) as server:
        assert run(cli, toy, server, "--experiments", "1", "--model", "my-finetune").code == 0
    spend = json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]
    assert spend["cost_usd"] == pytest.approx((3000 + 600 * 2 + 15000 + 6000) / 1e6)
