"""The claude-code agent: the real Claude Agent SDK and its bundled Claude Code program, talking to a local
streaming (server-sent events) Messages API stand-in, with a temporary HOME and no other traffic."""

import json
import re
from pathlib import Path

import pytest

sdk = pytest.importorskip("claude_agent_sdk")
if not (Path(sdk.__file__).parent / "_bundled" / "claude").exists():
    pytest.skip("the Claude Agent SDK has no bundled Claude Code program here", allow_module_level=True)

from autoresearch.agents import AgentError, create
from autoresearch.agents.claude_code import TOOLS, collect
from autoresearch.agents.workbench import Workbench
from autoresearch.config import AgentSection
from autoresearch.records import State
from standin import Reply, Request, StandIn, context_for, message, stream, text, tool_results, tool_use
from toy import TAG

USAGE = {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 400, "cache_creation_input_tokens": 50}


class Conversation:
    """Answers Claude Code's main conversation turn by turn (steps take the working directory); any side
    request (no Edit tool offered) gets a short text."""

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, request: Request) -> Reply:
        tools = [t.get("name") for t in request.body.get("tools", [])]
        if "Edit" not in tools:
            response = message(text("ok"))
        else:
            cwd = re.search(r"Primary working directory: (/[^\s\\\"]+)", json.dumps(request.body)).group(1)
            turn = sum(1 for m in request.body["messages"] if m["role"] == "assistant")
            step = self.steps[min(turn, len(self.steps) - 1)]
            response = message(*step(cwd), usage=USAGE)
        return Reply(events=stream(response)) if request.body.get("stream") else Reply(response)


def read(cwd):
    return [tool_use("Read", file_path=f"{cwd}/train.py")]


def edit(cwd):
    return [tool_use("Edit", file_path=f"{cwd}/train.py", old_string="LR = 1.0", new_string="LR = 2.0")]


def done(cwd):
    return [text("I raised the learning rate.\nHYPOTHESIS: raise LR to 2, nearer the optimum at 3")]


@pytest.fixture(autouse=True)
def claude_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    (tmp_path / "home").mkdir()


def agent(server, **settings):
    return create("claude-code", settings=AgentSection(**{"base_url": server.url, "max_turns": 8, **settings}))


def test_claude_code_makes_an_edit_that_lands_and_is_run(toy, cli):
    with StandIn(Conversation(read, edit, done)) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "claude-code", "--base-url", server.url,
                     "--experiments", "1")
    assert result.code == 0, result.text
    experiment = toy.experiments()[1]
    assert (experiment.state, experiment.agent) == (State.KEPT, "claude-code")
    assert experiment.description == "raise LR to 2, nearer the optimum at 3"
    assert experiment.metric == pytest.approx(2.4)
    main = [r for r in server.requests if "Edit" in [t.get("name") for t in r.body.get("tools", [])]]
    assert sorted({t["name"] for t in main[0].body["tools"]} & {"Bash", "WebFetch", "WebSearch"}) == []
    assert main[0].headers.get("x-api-key") == "test-key" or main[0].headers.get("authorization") == "Bearer test-key"
    assert "Research memory" in json.dumps(main[0].body)
    spend = json.loads(cli("status", "-C", toy.root, "--json").out)["agent_cost"]
    assert spend["output_tokens"] == 3 * 20 and spend["cache_read_tokens"] == 3 * 400 and spend["cost_usd"] > 0


def test_edits_outside_the_editable_files_are_refused_by_the_guard(toy):
    def cheat(cwd):
        return [tool_use("Write", file_path=f"{cwd}/scorer.py", content="PENALTY = -100.0\n"),
                tool_use("Write", file_path="/tmp/autoresearch-claude-code-escape.py", content="x = 1\n")]

    with StandIn(Conversation(cheat, read, edit, done)) as server:
        proposal = agent(server).propose(context_for(toy.root))
    refusals = [r["content"] for r in tool_results(server.requests[-1]) if r.get("is_error")]
    assert any("refused: scorer.py is not an editable file" in str(r) for r in refusals)
    assert any("outside the working directory" in str(r) for r in refusals)
    assert not Path("/tmp/autoresearch-claude-code-escape.py").exists()
    assert set(proposal.writes) == {"train.py"} and "LR = 2.0" in proposal.writes["train.py"]


def test_a_refused_hypothesis_is_sent_back_once(toy):
    def lazy(cwd):
        return [text("HYPOTHESIS: it is fine as it is")]

    with StandIn(Conversation(lazy, read, edit, done)) as server:
        proposal = agent(server).propose(context_for(toy.root))
    assert "nothing changed yet" in json.dumps(server.requests[-1].body)
    assert proposal.description == "raise LR to 2, nearer the optimum at 3"


def test_the_turn_limit_is_an_agent_error(toy):
    with StandIn(Conversation(read)) as server, pytest.raises(AgentError, match="turn limit"):
        agent(server, max_turns=2).propose(context_for(toy.root))


def test_the_options_allow_only_file_tools_and_load_nothing_from_disk(toy, tmp_path):
    claude_code = create("claude-code", settings=AgentSection(base_url="http://127.0.0.1:9", max_turns=7))
    context = context_for(toy.root)
    options = claude_code.sdk_options(tmp_path, Workbench(context, claude_code.settings))
    assert options.tools == TOOLS == ["Read", "Edit", "Write", "Glob", "Grep"]
    assert options.allowed_tools == TOOLS
    assert (options.permission_mode, options.setting_sources, options.max_turns) == ("dontAsk", [], 7)
    assert options.cwd == str(tmp_path) and options.model == "claude-opus-5-5"
    assert options.env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9"
    assert options.env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert list(options.hooks) == ["PreToolUse"]


def test_collect_takes_changed_new_and_deleted_editable_files_only(toy, tmp_path):
    context = context_for(toy.root)
    bench = Workbench(context, AgentSection())
    (tmp_path / "train.py").write_text("LR = 2.0\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "new.py").write_text("X = 1\n")
    (tmp_path / "scorer.py").write_text("PENALTY = -1\n")
    (tmp_path / "notes.txt").write_text("x\n")
    collect(tmp_path, bench)
    assert bench.writes() == {"train.py": "LR = 2.0\n", "lib/new.py": "X = 1\n"}
    (tmp_path / "train.py").unlink()
    collect(tmp_path, bench)
    assert bench.writes()["train.py"] is None


def test_a_rate_limit_is_retried_by_claude_code(toy):
    conversation = Conversation(read, edit, done)
    limited = []

    def script(request):
        if "Edit" in [t.get("name") for t in request.body.get("tools", [])] and not limited:
            limited.append(request)
            return Reply({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                         status=429, headers={"retry-after": "0"})
        return conversation(request)

    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    assert limited and proposal.description == "raise LR to 2, nearer the optimum at 3"


def test_a_rate_limit_that_outlasts_the_retries_is_an_agent_error(toy):
    def script(request):
        if "Edit" in [t.get("name") for t in request.body.get("tools", [])]:
            return Reply({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                         status=429, headers={"retry-after": "0"})
        return Reply(message(text("ok")))

    with StandIn(script) as server, pytest.raises(AgentError, match=r"Claude Code failed \(HTTP 429\)"):
        agent(server, max_retries=0).propose(context_for(toy.root))
