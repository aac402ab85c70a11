"""The hybrid agent: LLM code changes interleaved with the numeric search, which adopts the LLM's constants."""

import pytest

import anthropic  # noqa: F401  (the real SDK is a test dependency: missing, these tests fail)

from autoresearch.agents import Agent, Proposal, create
from autoresearch.agents.hybrid import HybridAgent, _with_values, adopted_knobs
from autoresearch.config import AgentSection
from autoresearch.records import Experiment, State
from standin import StandIn, context_for, message, tool_use
from toy import TAG

ADD_MOMENTUM = [message(tool_use("replace", path="train.py", old="LR = 1.0     # learning rate: best at 3\n",
                                 new="LR = 2.0     # learning rate: best at 3\nMOMENTUM = 0.5  # search: 0.1..0.9\n")),
                message(tool_use("finish", hypothesis="raise LR and add momentum"))]
WIDEN = [message(tool_use("replace", path="train.py", old="import time\n", new="import time  # timing\n")),
         message(tool_use("finish", hypothesis="a wider model"))]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def experiment(index, agent, state=State.DISCARDED, diff="", parent="c0", commit=None, metric=5.0, knobs=None):
    return Experiment(id=index + 1, tag="t", index=index, state=state, parent=parent, commit=commit or f"c{index}",
                      description=f"#{index}", agent=agent, diff=diff, metric=metric, knobs=knobs or {})


def test_the_llm_then_the_search_twice_then_the_llm_again(toy, cli):
    with StandIn(ADD_MOMENTUM + WIDEN) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "claude+search", "--base-url", server.url,
                     "--experiments", "4")
    assert result.code == 0, result.text
    experiments = toy.experiments()[1:]
    assert [e.agent for e in experiments] == ["claude", "search", "search", "claude"]
    assert experiments[0].state is State.KEPT
    assert "MOMENTUM" in experiments[1].diff  # the search tunes the constant the LLM introduced
    assert experiments[3].description == "a wider model"


def test_the_mix_is_configurable_and_hybrid_means_claude_plus_search(toy, cli):
    with StandIn(ADD_MOMENTUM + WIDEN) as server:
        result = cli("run", "-C", toy.root, "--tag", TAG, "--agent", "hybrid", "--base-url", server.url,
                     "--agent-option", "search_per_llm=1", "--experiments", "3")
    assert result.code == 0, result.text
    assert [e.agent for e in toy.experiments()[1:]] == ["claude", "search", "claude"]


def test_whose_turn_comes_from_the_ledger_so_a_resumed_session_keeps_the_rhythm(toy):
    hybrid = HybridAgent(settings=AgentSection(base_url="http://127.0.0.1:9"))
    baseline = experiment(0, "harness", State.BASELINE)
    assert not hybrid._search_turn((baseline,))
    assert hybrid._search_turn((baseline, experiment(1, "claude")))
    assert hybrid._search_turn((baseline, experiment(1, "claude"), experiment(2, "search")))
    assert not hybrid._search_turn((baseline, experiment(1, "claude"), experiment(2, "search"), experiment(3, "search")))
    assert hybrid._search_turn((baseline, experiment(1, "claude+search")))  # a failed LLM proposal counts as its turn


class Recorder(Agent):
    name = "recorder"

    def propose(self, context):
        self.seen = context
        return Proposal("recorded")


def test_the_search_is_told_only_the_experiments_on_the_current_code(toy, monkeypatch):
    import autoresearch.agents as registry

    recorder = Recorder()
    monkeypatch.setitem(registry.BUILTIN, "recorder", "test_hybrid:Recorder")
    monkeypatch.setattr(Recorder, "__new__", lambda cls, *a, **k: recorder)
    hybrid = HybridAgent(search="recorder", settings=AgentSection(base_url="http://127.0.0.1:9"))
    history = [experiment(1, "recorder", State.KEPT, commit="c1"), experiment(2, "claude", State.DISCARDED, parent="c1"),
               experiment(3, "claude", State.KEPT, parent="c1", commit="c3"), experiment(4, "recorder", parent="c3"),
               experiment(5, "claude", parent="c3")]
    proposal = hybrid._tune(context_for(toy.root, history))
    assert proposal.meta["agent"] == "recorder"
    assert [e.index for e in recorder.seen.history] == [3, 4]


def test_constants_the_llm_introduced_or_changed_become_knobs(toy):
    diff = ("--- a/train.py\n+++ b/train.py\n@@ -1 +1,4 @@\n-LR = 1.0\n+LR = 2.0\n+MOMENTUM = 0.5  # search: 0.1..0.9\n"
            "+DROPOUT = 0.1\n+HEADS = 8\n+NAME = 'x'\n+    INNER = 3\n")
    context = context_for(toy.root, [experiment(1, "claude", State.KEPT, diff=diff)])
    files = dict(context.files)
    files["train.py"] += "MOMENTUM = 0.5  # search: 0.1..0.9\nDROPOUT = 0.1\nHEADS = 8\nNAME = 'x'\n"
    from dataclasses import replace

    knobs = {k.name: k for k in adopted_knobs(replace(context, files=files), "claude", {"LR", "WIDTH"})}
    assert set(knobs) == {"MOMENTUM", "DROPOUT", "HEADS"}
    assert (knobs["MOMENTUM"].low, knobs["MOMENTUM"].high, knobs["MOMENTUM"].log) == (0.1, 0.9, False)
    assert (knobs["DROPOUT"].low, knobs["DROPOUT"].high, knobs["DROPOUT"].log) == (0.025, 0.55, True)
    assert (knobs["HEADS"].type, knobs["HEADS"].low, knobs["HEADS"].high) == ("int", 2, 32)


def test_the_adopted_knobs_values_are_read_back_from_the_diffs(toy):
    from dataclasses import replace

    from autoresearch.config import Knob

    added = "+++ b/train.py\n+MOMENTUM = 0.5\n"
    history = [experiment(1, "claude", State.KEPT, diff=added, commit="c1"),
               experiment(2, "search", State.KEPT, diff="+++ b/train.py\n-MOMENTUM = 0.5\n+MOMENTUM = 0.3\n",
                          parent="c1", commit="c2"),
               experiment(3, "search", diff="+++ b/train.py\n-MOMENTUM = 0.3\n+MOMENTUM = 0.7\n", parent="c2")]
    context = context_for(toy.root, history)
    context = replace(context, files={"train.py": context.files["train.py"] + "MOMENTUM = 0.3\n"})
    knob = Knob(name="MOMENTUM", file="train.py", low=0.1, high=0.9)
    filled = _with_values(list(context.history[1:]), [knob], context)
    assert [e.knobs["MOMENTUM"] for e in filled] == [0.5, 0.3, 0.7]


def test_an_llm_only_mix_never_calls_the_search(toy):
    hybrid = create("claude+search", settings=AgentSection(base_url="http://127.0.0.1:9", search_per_llm=0))
    assert not hybrid._search_turn((experiment(0, "harness", State.BASELINE), experiment(1, "claude")))
