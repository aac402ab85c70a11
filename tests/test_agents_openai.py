"""The openai agent: the real `openai` SDK against a local chat-completions stand-in, with tools and in plain text."""

import json

import pytest

import openai  # noqa: F401  (a test dependency: missing, these tests fail)

from autoresearch.agents import create
from autoresearch.config import AgentSection
from autoresearch.records import State
from standin import StandIn, call, completion, context_for, error
from toy import TAG

RAISE_LR = [completion(calls=[call("read_file", {"path": "train.py"})]),
            completion(calls=[call("replace", {"path": "train.py", "old": "LR = 1.0", "new": "LR = 2.0"})]),
            completion(calls=[call("finish", {"hypothesis": "raise LR to 2"})])]

SEARCH_REPLACE = """I will raise the learning rate.

train.py
<<<<<<< SEARCH
LR = 1.0     # learning rate: best at 3
=======
LR = 2.5     # learning rate: best at 3
>>>>>>> REPLACE

HYPOTHESIS: raise LR to 2.5, closer to the optimum
"""

DIFF = """```diff
--- a/train.py
+++ b/train.py
@@ -5,2 +5,2 @@
-LR = 1.0     # learning rate: best at 3
-WIDTH = 4    # width: best at 8
+LR = 1.0     # learning rate: best at 3
+WIDTH = 8    # width: best at 8
```
**Hypothesis:** a wider model
"""


def agent(server, **settings):
    return create("openai", settings=AgentSection(base_url=server.url, model="local-model", max_retries=2, **settings))


def test_tool_calls_make_an_edit_that_lands_and_is_run(toy, cli):
    with StandIn(list(RAISE_LR)) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "openai", "--model", "local-model",
                     "--base-url", server.url + "/v1", "--experiments", "1")
    assert result.code == 0, result.text
    experiment = toy.experiments()[1]
    assert (experiment.state, experiment.agent, experiment.description) == (State.KEPT, "openai", "raise LR to 2")
    first = server.requests[0]
    assert first.path == "/v1/chat/completions" and first.body["model"] == "local-model"
    assert [t["function"]["name"] for t in first.body["tools"]] == \
           ["read_file", "list_files", "replace", "view_memory", "check", "note", "finish"]
    assert first.body["tool_choice"] == "auto"
    assert first.body["max_tokens"] == first.body["max_completion_tokens"] == 16000  # both names, for local servers
    assert first.body["messages"][0]["role"] == "system"
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and "train.py is unchanged since your first message" in tool_message["content"]
    assert "content" not in server.requests[2].body["messages"][-2]  # no null content beside tool calls


def test_a_failed_tool_call_is_reported_as_the_tool_result(toy):
    script = [completion(calls=[call("replace", {"path": "scorer.py", "old": "PENALTY = 0.0", "new": "PENALTY = -1"}),
                                call("replace", '{"path": "train.py", "old": ')]),
              *RAISE_LR[1:]]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    refused, broken = server.requests[1].body["messages"][-2:]
    assert refused["content"].startswith("error: refused: scorer.py is protected")
    assert broken["content"].startswith("error: the arguments are not valid JSON")
    assert set(proposal.writes) == {"train.py"}


def test_cached_prompt_tokens_are_counted_apart(toy):
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
             "prompt_tokens_details": {"cached_tokens": 800}}
    script = [completion(calls=c["choices"][0]["message"]["tool_calls"], usage=usage) for c in RAISE_LR]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    spent = proposal.meta["usage"]
    assert (spent.input_tokens, spent.cache_read_tokens, spent.output_tokens, spent.requests) == (600, 2400, 150, 3)
    assert spent.cost_usd is None  # a local model has no price


def test_a_rate_limit_then_success(toy):
    script = [error(429, "rate_limit_exceeded", "slow down", retry_after_ms="10"), *RAISE_LR]
    with StandIn(script) as server:
        assert agent(server).propose(context_for(toy.root)).description == "raise LR to 2"
    assert len(server.requests) == 4


def test_plain_text_search_replace_blocks(toy):
    with StandIn([completion(SEARCH_REPLACE)]) as server:
        proposal = agent(server, tools=False).propose(context_for(toy.root))
    assert "tools" not in server.requests[0].body
    assert "<<<<<<< SEARCH" in server.requests[0].body["messages"][-1]["content"]  # the format is explained
    assert proposal.description == "raise LR to 2.5, closer to the optimum"
    assert "LR = 2.5     # learning rate" in proposal.writes["train.py"]


def test_plain_text_unified_diff(toy):
    with StandIn([completion(DIFF)]) as server:
        proposal = agent(server, tools=False).propose(context_for(toy.root))
    assert proposal.description == "a wider model"
    assert "WIDTH = 8    # width" in proposal.writes["train.py"]


def test_plain_text_problems_are_sent_back_and_the_model_tries_again(toy):
    wrong = SEARCH_REPLACE.replace("LR = 1.0     #", "LR = 9.0     #")
    with StandIn([completion("Sure! Lowering the loss is a great goal."), completion(wrong),
                  completion(SEARCH_REPLACE)]) as server:
        proposal = agent(server, tools=False).propose(context_for(toy.root))
    first, second = (server.requests[i].body["messages"][-1]["content"] for i in (1, 2))
    assert "no search/replace block and no unified diff found" in first
    assert "the old text was not found in train.py" in second
    assert proposal.writes["train.py"].count("LR = 2.5") == 1


def test_plain_text_garbage_to_the_end_is_an_agent_error(toy, cli):
    with StandIn([completion("no idea") for _ in range(4)]) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "openai", "--model", "m", "--base-url",
                     server.url, "--agent-option", "tools=false", "--agent-option", "max_turns=2",
                     "--experiments", "2")
    assert result.code == 0, result.text
    failures = toy.experiments()[1:]
    assert [e.reason for e in failures] == ["agent error: the model did not finish within 2 tool turns; its answers: "
                                            "no edit block (2)"] * 2
    assert json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]["requests"] == 4


def test_no_key_and_no_base_url_is_a_clear_error(toy, cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = cli("run", "-C", toy.root, "--agent", "openai", "--model", "gpt")
    assert result.code == 2 and "OPENAI_API_KEY is not set" in result.err


def test_a_model_is_required(toy, cli):
    result = cli("run", "-C", toy.root, "--agent", "openai", "--base-url", "http://127.0.0.1:9")
    assert result.code == 2 and "the openai agent needs a model" in result.err
