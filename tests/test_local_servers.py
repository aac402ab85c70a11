"""The openai agent against local servers, through the real `openai` SDK and stand-ins that answer as vLLM, Ollama
and llama.cpp do: every request sized to the context window, and a server that cannot serve the requests ends
the session with what to change, recorded in the ledger."""

import json

import pytest

import openai  # noqa: F401  (a test dependency: missing, these tests fail)

from autoresearch.agents import AgentError, AgentSetupError, create
from autoresearch.agents.openai_chat import DROPPED
from autoresearch.agents.prompt import CHARS_PER_TOKEN, MIN_OUTPUT_TOKENS
from autoresearch.config import AgentSection
from autoresearch.records import State
from standin import VLLM_CONTEXT, VLLM_TOOL_CHOICE, StandIn, call, completion, context_for, error, \
    ollama_truncated, vllm_refusal
from toy import TAG, TRAIN

CONTEXT = 8192
# A train.py of about 45,000 characters (15,000 tokens): more than an 8k window holds.
BIG_TRAIN = TRAIN + "".join(f"# note {i}: " + "a long comment that a real training script would not have\n"
                            for i in range(640))
RAISE_LR = [completion(calls=[call("replace", {"path": "train.py", "old": "LR = 1.0", "new": "LR = 2.0"})]),
            completion(calls=[call("finish", {"hypothesis": "raise LR to 2"})])]


def agent(server, **settings):
    return create("openai", settings=AgentSection(base_url=server.url, model="local", max_retries=0, **settings))


def request_chars(request) -> int:
    return len(json.dumps(request.body["messages"])) + len(json.dumps(request.body.get("tools", [])))


def fits(request, context=CONTEXT) -> bool:
    """Whether a request's prompt, estimated as the agent does, and its answer fit the window."""
    return request_chars(request) / CHARS_PER_TOKEN + request.body["max_tokens"] <= context


def run(cli, toy, server, *extra):
    return cli("run", "-C", toy.root, "--tag", TAG, "--agent", "openai", "--model", "local", "--base-url",
               server.url, *extra)


# ---------------------------------------------------------------- sizing


def test_the_first_request_fits_the_window_with_the_files_head_and_a_trimmed_memory(make_toy):
    toy = make_toy(train=BIG_TRAIN)
    with StandIn(list(RAISE_LR)) as server:
        agent(server, context_tokens=CONTEXT).propose(context_for(toy.root))
    first = server.requests[0]
    assert all(fits(r) for r in server.requests)
    assert first.body["max_tokens"] == first.body["max_completion_tokens"] < 16000  # clamped, under both names
    text = first.body["messages"][1]["content"]
    assert "lines: the whole file does not fit the model's context; read_file(path, start, end) shows any lines)" \
        in text
    assert "\nLR = 1.0     # learning rate: best at 3\nWIDTH = 4    # width: best at 8\nSLEEP = 0.0" in text
    assert "# note 639:" not in text
    assert "## Research memory" in text


def test_without_a_window_everything_is_sent_as_before(make_toy):
    toy = make_toy(train=BIG_TRAIN)
    with StandIn(list(RAISE_LR)) as server:
        agent(server).propose(context_for(toy.root))
    assert BIG_TRAIN.format(pid_file=str(toy.pid_file)) in server.requests[0].body["messages"][1]["content"]
    assert server.requests[0].body["max_tokens"] == 16000


def test_the_oldest_tool_outputs_are_dropped_when_the_conversation_outgrows_the_window(make_toy):
    toy = make_toy(train=BIG_TRAIN)
    reads = [completion(calls=[call("read_file", {"path": "train.py", "start": 1 + 150 * i, "end": 150 * (i + 1)})])
             for i in range(5)]
    with StandIn(reads + RAISE_LR) as server:
        proposal = agent(server, context_tokens=CONTEXT, max_turns=10).propose(context_for(toy.root))
    assert proposal.description == "raise LR to 2"
    assert all(fits(r) and r.body["max_tokens"] >= MIN_OUTPUT_TOKENS for r in server.requests)
    last = server.requests[-1].body["messages"]
    assert last[3]["content"] == DROPPED and last[-1]["content"].startswith("replaced in train.py")


def test_the_servers_token_counts_set_the_characters_per_token(make_toy):
    toy = make_toy(train=BIG_TRAIN)

    def counted(request):
        reply = (RAISE_LR * 2)[len(server.requests) - 1]
        reply["usage"] = {"prompt_tokens": request_chars(request) // 4, "completion_tokens": 5, "total_tokens": 9}
        return reply

    with StandIn(counted) as server:
        openai_agent = agent(server, context_tokens=CONTEXT)
        openai_agent.propose(context_for(toy.root))
        assert openai_agent.chars_per_token == pytest.approx(3.8, abs=0.01)  # 4, less a margin
        openai_agent.propose(context_for(toy.root))
    assert len(server.requests[2].body["messages"][1]["content"]) > len(server.requests[0].body["messages"][1]["content"])


def test_a_window_too_small_for_the_prompt_itself_is_a_setup_error(make_toy):
    toy = make_toy(files={"program.md": "Make the score as low as you can. " * 300})
    with StandIn([]) as server, pytest.raises(AgentSetupError, match="context_tokens 4096 leaves no room"):
        agent(server, context_tokens=4096).propose(context_for(toy.root))
    assert server.requests == []


# ---------------------------------------------------------------- refusals end the session


@pytest.mark.parametrize("pipeline", [False, True], ids=["serial", "pipeline"])
def test_vllm_without_its_tool_flags_ends_the_session_saying_which_flags(toy, cli, pipeline):
    with StandIn([vllm_refusal(VLLM_TOOL_CHOICE)] * 3) as server:
        result = run(cli, toy, server, "--experiments", "3", *(["--pipeline"] if pipeline else []))
    assert result.code == 1, result.text
    assert "--enable-auto-tool-choice --tool-call-parser" in result.out and "tools = false" in result.out
    assert len(server.requests) == 1  # not retried, not asked again
    baseline, refused = toy.experiments()
    assert refused.state is State.REJECTED and refused.reason.startswith(
        "agent error: the server refused tool calling (\"auto\" tool choice requires")
    assert toy.sessions()[-1]["end_reason"].startswith("paused: the server refused tool calling")
    assert toy.branch() == baseline.commit
    assert json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]["proposals"] == 0  # nothing answered


def test_a_request_over_the_context_window_ends_the_session_saying_context_tokens(toy, cli):
    with StandIn([vllm_refusal(VLLM_CONTEXT)]) as server:
        result = run(cli, toy, server, "--experiments", "2")
    assert result.code == 1, result.text
    refused = toy.experiments()[1]
    assert refused.reason.startswith("agent error: the request did not fit the server's context window (This model's "
                                     "maximum context length is 8192 tokens.")
    assert "context_tokens" in refused.reason and "--max-model-len" in refused.reason


def test_llama_cpp_style_errors_on_500_are_read_too(toy):
    refusal = error(500, "internal_server_error", "Requested tokens (9000) exceed context window of 8192")
    with StandIn([refusal]) as server, pytest.raises(AgentError, match="did not fit the server's context window"):
        agent(server).propose(context_for(toy.root))


def test_ollama_cutting_the_prompt_silently_ends_the_session_saying_its_context_length(make_toy, cli):
    toy = make_toy(train=BIG_TRAIN)
    calls = RAISE_LR[0]["choices"][0]["message"]["tool_calls"]
    with StandIn([ollama_truncated(calls=calls, context=2048)]) as server:  # Ollama's old default window
        result = run(cli, toy, server, "--experiments", "2")
    assert result.code == 1, result.text
    refused = toy.experiments()[1]
    assert refused.state is State.REJECTED and "the server read only 2,048 tokens of a prompt of" in refused.reason
    assert "OLLAMA_CONTEXT_LENGTH" in refused.reason and "context_tokens" in refused.reason
    cost = json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]
    assert (cost["proposals"], cost["input_tokens"]) == (1, 2048)  # what the refused answer cost is on the record


def test_a_model_that_never_calls_a_tool_is_told_to_switch_tools_off(toy):
    with StandIn([completion("Here is my idea: raise the learning rate.")] * 2) as server, \
            pytest.raises(AgentError, match="never called a tool: .* set \\[agent\\] tools = false"):
        agent(server, max_turns=2).propose(context_for(toy.root))
