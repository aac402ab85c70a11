"""The claude-code agent: the real Claude Agent SDK and its bundled Claude Code program, talking to a local
streaming (server-sent events) Messages API stand-in, with a temporary HOME and no other traffic."""

import dataclasses
import json
import re
from functools import partial
from pathlib import Path

import pytest

import claude_agent_sdk as sdk  # a test dependency: missing, these tests fail
if not (Path(sdk.__file__).parent / "_bundled" / "claude").exists():
    pytest.skip("the Claude Agent SDK has no bundled Claude Code program here", allow_module_level=True)

from autoresearch import briefing, trial
from autoresearch.agents import AgentError, create
from autoresearch.agents.claude_code import TOOLS, collect
from autoresearch.agents.workbench import Workbench
from autoresearch.config import AgentSection
from autoresearch.records import Experiment, State
from autoresearch.target import Target
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


# ---------------------------------------------------------------- told the truth, and guarded


def with_services(toy):
    """The context a session gives: the check, a note recorder, the protected files to read."""
    target = Target.open(toy.root)
    notes = []
    context = dataclasses.replace(context_for(toy.root, [tried()]), note=notes.append,
                                  check=partial(trial.check, target, toy.resolve("HEAD")),
                                  read_only=briefing.read_only(target, toy.resolve("HEAD")))
    return context, notes


def tried():
    return Experiment(id=2, tag="t", index=1, state=State.DISCARDED, parent="c0", commit="c1", agent="claude-code",
                      description="halve the width", diff="-WIDTH = 4\n+WIDTH = 2\n", metric=5.6)


def main_requests(server):
    return [r for r in server.requests if "Edit" in [t.get("name") for t in r.body.get("tools", [])]]


def test_the_prompt_names_the_tools_claude_code_has_and_the_hypothesis_line(toy):
    context, _ = with_services(toy)
    with StandIn(Conversation(edit, done)) as server:
        agent(server).propose(context)
    first = main_requests(server)[0].body
    system = json.dumps(first["system"])
    for name in ("Read, Glob and Grep", "Edit and Write", "mcp__autoresearch__check", "mcp__autoresearch__note",
                 "HYPOTHESIS: what you changed", "autoresearch-memory/"):
        assert name in system
    for wrong in ("read_file", "view_memory", "replace (", "call finish"):
        assert wrong not in system and wrong not in json.dumps(first["messages"])
    offered = {t["name"] for t in first["tools"]}
    assert {"mcp__autoresearch__check", "mcp__autoresearch__note"} <= offered
    assert not offered & {"Bash", "WebFetch", "WebSearch"}


def test_the_memory_and_the_protected_files_are_read_only_files_in_its_directory(toy):
    context, _ = with_services(toy)

    def look(cwd):
        return [tool_use("Read", file_path=f"{cwd}/autoresearch-memory/experiment-0001.md"),
                tool_use("Read", file_path=f"{cwd}/scorer.py"),
                tool_use("Write", file_path=f"{cwd}/autoresearch-memory/memory.md", content="all kept\n"),
                tool_use("Edit", file_path=f"{cwd}/scorer.py", old_string="PENALTY = 0.0", new_string="PENALTY = -9")]

    with StandIn(Conversation(look, edit, done)) as server:
        proposal = agent(server).propose(context)
    results = {str(r["content"]): bool(r.get("is_error")) for r in tool_results(main_requests(server)[1])}
    assert len(results) == 4  # Claude Code runs the calls at once: their results come in any order

    def result(words):
        return next((text, error) for text, error in results.items() if words in text)

    assert result("experiment #1: discarded (clear loser)") == (result("halve the width")[0], False)
    assert not result("PENALTY = 0.0")[1]
    assert result("refused: autoresearch-memory/memory.md is not an editable file")[1]
    assert result("refused: scorer.py is not an editable file")[1]
    assert set(proposal.writes) == {"train.py"}


@pytest.mark.parametrize("tool, arguments", [
    ("Glob", {"pattern": "/etc/*"}),
    ("Glob", {"pattern": "../**/*.py"}),
    ("Glob", {"pattern": "**/../../*"}),
    ("Glob", {"pattern": "{/etc,x}/passwd"}),
    ("Glob", {"pattern": "*", "path": "/etc"}),
    ("Grep", {"pattern": "root", "path": "/etc"}),
    ("Grep", {"pattern": "root", "glob": "/etc/**"}),
    ("Read", {"file_path": "../toy/scorer.py"}),
])
def test_every_path_like_argument_is_guarded(toy, tool, arguments):
    def escape(cwd):
        return [tool_use(tool, **arguments)]

    with StandIn(Conversation(escape, edit, done)) as server:
        agent(server).propose(context_for(toy.root))
    (result,) = tool_results(main_requests(server)[1])
    assert result["is_error"] and "outside the working directory" in str(result["content"])


def test_a_glob_inside_the_directory_is_allowed(toy):
    def look(cwd):
        return [tool_use("Glob", pattern="**/*.py")]

    with StandIn(Conversation(look, edit, done)) as server:
        agent(server).propose(context_for(toy.root))
    (result,) = tool_results(main_requests(server)[1])
    assert not result.get("is_error") and "train.py" in str(result["content"])


def test_the_check_and_the_note_are_tools_it_can_call(toy):
    context, notes = with_services(toy)

    def check(cwd):
        return [tool_use("mcp__autoresearch__check"), tool_use("mcp__autoresearch__note", text="LR 2 next, then 3")]

    with StandIn(Conversation(edit, check, done)) as server:
        proposal = agent(server).propose(context)
    checked, noted = sorted((str(r["content"]) for r in tool_results(main_requests(server)[2])[-2:]),
                            key=lambda text: "noted" in text)  # in any order
    assert "ok (4steps on cpu" in checked and "score 2.4" in checked
    assert "noted" in noted and notes == ["LR 2 next, then 3"]
    assert proposal.meta["usage"].checks == 1 and proposal.meta["usage"].check_seconds > 0
