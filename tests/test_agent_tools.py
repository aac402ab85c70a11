"""The LLM agents' tools as a model meets them, through the real `anthropic` SDK and a local stand-in: arguments
checked against the schema, protected files readable but never editable, the check of edited code (run by the
harness, jailed, outside the ledger but for its cost), and notes that later proposals see."""

import dataclasses
import json
import sqlite3
from functools import partial

import pytest

import anthropic  # noqa: F401  (the real SDK is a test dependency: missing, these tests fail)

from autoresearch import briefing, memory, trial
from autoresearch.agents import create
from autoresearch.agents.workbench import MAX_NOTES, Workbench
from autoresearch.config import AgentSection
from autoresearch.records import State
from autoresearch.target import Target
from jail import needs_jail
from standin import StandIn, context_for, message, tool_results, tool_use
from toy import CONFIG, TAG



@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def agent(server, **settings):
    return create("claude", settings=AgentSection(base_url=server.url, max_retries=0, **settings))


def run(cli, toy, server, *extra):
    return cli("run", "-C", toy.root, "--tag", TAG, "--agent", "claude", "--base-url", server.url, *extra)


def finish(hypothesis="raise LR"):
    return message(tool_use("finish", hypothesis=hypothesis))


RAISE = message(tool_use("replace", path="train.py", old="LR = 1.0", new="LR = 2.0"))


# ---------------------------------------------------------------- arguments


def test_a_replace_missing_its_new_text_is_an_error_the_model_reads_and_deletes_nothing(toy):
    script = [message(tool_use("replace", path="train.py", old="LR = 1.0     # learning rate: best at 3\n")),
              finish(), RAISE, finish()]
    with StandIn(script) as server:
        proposal = agent(server).propose(context_for(toy.root))
    missing, nothing = tool_results(server.requests[2])
    assert missing["is_error"] and missing["content"] == \
        "replace was not run: missing argument new (replace needs path, old and new)"
    assert nothing["is_error"] and "nothing changed yet" in nothing["content"]
    assert "LR = 2.0     # learning rate: best at 3" in proposal.writes["train.py"]  # the line is still there


def test_arguments_of_the_wrong_type_are_errors_and_quoted_numbers_are_read(toy):
    bench = Workbench(context_for(toy.root), AgentSection())
    assert bench.call("replace", {"path": "train.py", "old": 1.0, "new": "LR = 2"}) == \
        ("replace was not run: old must be a string, got float", True)
    assert bench.call("read_file", {"path": "train.py", "start": "two"}) == \
        ("read_file was not run: start must be an integer, got 'two'", True)
    assert bench.call("read_file", {"path": "train.py", "start": "5", "end": 5}) == \
        ("train.py, lines 5-5 of 16:\nLR = 1.0     # learning rate: best at 3\n", False)
    assert bench.call("finish", {}) == ("finish was not run: missing argument hypothesis (finish needs hypothesis)", True)
    assert bench.writes() == {} and sum(bench.problems.values()) == 3


def test_an_unchanged_file_is_not_sent_again_but_a_changed_one_is(toy):
    bench = Workbench(context_for(toy.root), AgentSection())
    bench.shown = {"train.py"}
    text, error = bench.call("read_file", {"path": "train.py"})
    assert not error and text.startswith("train.py is unchanged since your first message")
    bench.call("replace", {"path": "train.py", "old": "LR = 1.0", "new": "LR = 2.0"})
    assert bench.call("read_file", {"path": "train.py"})[0] == bench.files["train.py"]


# ---------------------------------------------------------------- protected files: read, never edited


def test_protected_files_are_readable_and_listed_but_never_editable(toy):
    context = context_for(toy.root)
    context = dataclasses.replace(context, read_only=briefing.read_only(Target.open(toy.root), toy.resolve("HEAD")))
    script = [message(tool_use("read_file", path="scorer.py")), message(tool_use("list_files")),
              message(tool_use("replace", path="scorer.py", old="PENALTY = 0.0", new="PENALTY = -1.0")),
              RAISE, finish()]
    with StandIn(script) as server:
        proposal = agent(server).propose(context)
    read, listed, refused, _ = tool_results(server.requests[-1])
    assert read["content"] == '"""A trusted helper the agent may not touch."""\nPENALTY = 0.0\n' and not read["is_error"]
    assert "scorer.py  2 lines  (read-only)" in listed["content"] and "train.py  16 lines" in listed["content"]
    assert refused["is_error"] and refused["content"].startswith("refused: scorer.py is protected")
    assert set(proposal.writes) == {"train.py"}
    assert "Read-only (read_file): autoresearch.toml, program.md, scorer.py." in \
        server.requests[0].body["messages"][0]["content"][0]["text"]


def test_the_readable_protected_files_leave_out_data_large_files_and_hidden_paths(make_toy):
    config = CONFIG.replace('protected = ["scorer.py", "program.md"]',
                            'protected = ["scorer.py", "program.md", "data.bin", "big.txt", "secret/*", "helper.py"]')
    toy = make_toy(config=config + '\n[sandbox]\nhide = ["secret"]\n', files={"helper.py": "X = 1\n"})
    extra = {"data.bin": bytes(range(256)) * 4, "big.txt": b"x" * (briefing.READ_ONLY_BYTES + 1),
             "secret/key.txt": b"hunter2\n"}
    for path, data in extra.items():
        (toy.root / path).parent.mkdir(exist_ok=True)
        (toy.root / path).write_bytes(data)
    toy.git("add", "-A")
    toy.git("commit", "-qm", "more protected files")
    readable = briefing.read_only(Target.open(toy.root), toy.resolve("HEAD"))
    assert sorted(readable) == ["autoresearch.toml", "helper.py", "program.md", "scorer.py"]


# ---------------------------------------------------------------- the check


BROKEN = "LR = undefined_name  # a NameError when the file runs"


def test_the_check_returns_the_traceback_then_ok_and_its_cost_is_recorded(toy, cli):
    script = [message(tool_use("replace", path="train.py", old="LR = 1.0", new=BROKEN)),
              message(tool_use("check")),
              message(tool_use("replace", path="train.py", old=BROKEN, new="LR = 2.0")),
              message(tool_use("check")), finish("raise LR to 2")]
    with StandIn(script) as server:
        result = run(cli, toy, server, "--experiments", "1")
    assert result.code == 0, result.text
    failed, _, ok = tool_results(server.requests[-1])[1:4]
    assert failed["is_error"] and failed["content"].startswith("the check failed (4steps on cpu, ")
    assert "exited with code 1" in failed["content"] and "NameError: name 'undefined_name' is not defined" in \
        failed["content"] and memory.UNTRUSTED_OPEN in failed["content"]
    assert not ok["is_error"] and ok["content"].startswith("ok (4steps on cpu, ") and "the run printed score 2.4" \
        in ok["content"]
    experiment = toy.experiments()[1]
    assert (experiment.state, experiment.description) == (State.KEPT, "raise LR to 2")
    db = sqlite3.connect(toy.root / ".autoresearch" / "ledger.sqlite")
    checks, seconds = db.execute("SELECT checks, check_seconds FROM agent_costs").fetchone()
    assert checks == 2 and 0 < seconds < 240
    status = json.loads(cli("status", "-C", toy.root, "--json").out)
    assert status["agent_cost"]["checks"] == 2
    assert "LR = 1.0" in (toy.root / "train.py").read_text()  # the user's checkout is untouched
    assert [e.index for e in toy.experiments()] == [0, 1]  # a check is no experiment


@needs_jail
def test_a_check_cannot_write_the_target_nor_move_its_branch(toy, cli):
    attack = ("import os, subprocess\n"
              "root = os.path.abspath('../../..')\n"
              "subprocess.run(['git', '-C', root, 'update-ref', 'refs/heads/autoresearch/t', 'HEAD~0'])\n"
              "open(os.path.join(root, 'scorer.py'), 'w').write('PENALTY = -100.0\\n')\n")
    script = [message(tool_use("replace", path="train.py", old="import time\n", new="import time\n" + attack)),
              message(tool_use("check")),
              message(tool_use("replace", path="train.py", old=attack, new="")), RAISE, finish()]
    with StandIn(script) as server:
        result = run(cli, toy, server, "--experiments", "1")
    assert result.code == 0, result.text
    check = tool_results(server.requests[-1])[1]
    assert check["is_error"] and "Read-only file system" in check["content"]
    assert (toy.root / "scorer.py").read_text() == '"""A trusted helper the agent may not touch."""\nPENALTY = 0.0\n'
    kept = toy.experiments()[1]
    assert kept.state is State.KEPT and toy.branch() == kept.commit
    assert toy.git("status", "--porcelain") == ""


def test_a_check_of_a_file_that_does_not_parse_is_refused_before_it_runs(toy):
    context = context_for(toy.root)
    ran = []
    context = dataclasses.replace(context, check=lambda writes, device: ran.append(writes))
    bench = Workbench(context, AgentSection())
    bench.call("replace", {"path": "train.py", "old": "LR = 1.0", "new": "LR = = 1.0"})
    assert bench.call("check", {}) == ("not run: train.py does not parse: invalid syntax (line 5)", True)
    assert ran == [] and bench.usage.checks == 0


def test_checks_per_proposal_are_limited_and_the_tool_is_gone_when_switched_off(toy):
    target = Target.open(toy.root)
    context = dataclasses.replace(context_for(toy.root), check=partial(trial.check, target, toy.resolve("HEAD")))
    bench = Workbench(context, AgentSection())
    answers = [bench.call("check", {}) for _ in range(4)]
    assert [error for _, error in answers] == [False, False, False, True]
    assert answers[-1][0] == "refused: you have used the 3 checks of this proposal"
    assert bench.usage.checks == 3
    assert "check" not in [t["name"] for t in Workbench(context, AgentSection(check="off")).tools]
    assert "check" not in [t["name"] for t in Workbench(context_for(toy.root), AgentSection()).tools]


# ---------------------------------------------------------------- notes


def test_a_note_is_kept_in_the_ledger_and_shown_to_the_next_proposals(toy, cli):
    first = [message(tool_use("note", text="LR seems far from its optimum: try 2 then 3")), RAISE,
             *[message(tool_use("note", text=f"extra note {i}")) for i in range(MAX_NOTES)], finish("raise LR to 2")]
    second = [message(tool_use("replace", path="train.py", old="LR = 2.0", new="LR = 3.0")), finish("LR to 3")]
    with StandIn(first + second) as server:
        result = run(cli, toy, server, "--experiments", "2")
    assert result.code == 0, result.text
    extra = tool_results(server.requests[len(first) - 1])[-MAX_NOTES:]
    assert [r["is_error"] for r in extra] == [False] * (MAX_NOTES - 1) + [True]
    shown = server.requests[len(first)].body["messages"][0]["content"][1]["text"]
    notes = shown[shown.index("## Your notes"):]
    assert notes.index(memory.UNTRUSTED_OPEN) < notes.index("after #0: LR seems far from its optimum: try 2 then 3") \
        < notes.index(memory.UNTRUSTED_CLOSE)
    db = sqlite3.connect(toy.root / ".autoresearch" / "ledger.sqlite")
    assert db.execute("SELECT after_idx, agent, text FROM notes ORDER BY id").fetchall() == [
        (0, "claude", "LR seems far from its optimum: try 2 then 3"), (0, "claude", "extra note 0")]
    assert [e.state for e in toy.experiments()[1:]] == [State.KEPT, State.KEPT]
