"""Agents propose the next change. A plugin subclasses `Agent` and implements `propose`.

Built-in agents and third-party ones (entry point group `autoresearch.agents`) are found through
the same registry, so the loop never imports a concrete agent:

    class MyAgent(Agent):
        name = "mine"
        def propose(self, context: Context) -> Proposal: ...

`create("claude+search")` makes the hybrid of two registered agents (agents/hybrid.py). An agent
that pays for its proposals puts a `costs.Usage` in `Proposal.meta["usage"]` (or on the error it
raises), and the session records it in the ledger. An agent that read the human's suggestions
(`Context.suggestions`) lists their ids in `Proposal.meta["suggestions"]`: the ledger then records
them as taken up by this proposal's experiment; the others wait for the next proposal. A session's
Context also carries the harness's services (briefing.py): `check(writes, device)` runs the edited
files for a few training steps and returns a `trial.Trial`; `note(text)` keeps a line for later
proposals (`Context.notes`). An agent raises `AgentSetupError` when its server cannot serve it as
set up: the session then pauses with that message.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Callable, Mapping, Optional

from ..config import Config
from ..records import Experiment, Note, Suggestion

if TYPE_CHECKING:
    from ..trial import Trial


@dataclass(frozen=True)
class Context:
    """What an agent knows when it proposes: built fresh from the ledger every time."""

    config: Config
    program: str
    files: dict[str, str]  # the editable files as they are at the parent commit
    parent: Experiment  # the current best: the proposal is applied on top of its commit
    baseline: Experiment
    history: tuple[Experiment, ...]  # every experiment of this tag, oldest first
    suggestions: tuple[Suggestion, ...] = ()  # what the human asked this proposal to consider (`autoresearch suggest`)
    pending: tuple["Proposal", ...] = ()  # proposals made but not yet recorded (several slots): propose others
    notes: tuple[Note, ...] = ()  # what the agent wrote down in earlier proposals (its note tool), oldest first
    read_only: Mapping[str, str] = field(default_factory=dict)  # protected text files at the parent: read, never edit
    # Harness services, None where there are none (a test's context): `check(writes, device)` runs the train command
    # on the parent's files with `writes` over them at a tiny budget (trial.py); `note(text)` records a note.
    check: Optional[Callable[[Mapping[str, Optional[str]], str], "Trial"]] = None
    note: Optional[Callable[[str], object]] = None


@dataclass(frozen=True)
class Proposal:
    """One change: new contents for files (None deletes a file) and a one-line hypothesis."""

    description: str
    writes: dict[str, Optional[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class ProposalError(Exception):
    """The agent's output cannot be turned into a change (recorded as a rejected experiment)."""

    def __init__(self, message: str, usage=None):
        super().__init__(message)
        self.usage = usage  # a costs.Usage: what the failed proposal cost


class AgentError(Exception):
    """The agent could not propose: its provider failed after retries, it never finished, it answered
    nonsense. Recorded as an agent error; a run of them pauses the session."""

    def __init__(self, message: str, usage=None):
        super().__init__(message)
        self.usage = usage


class AgentSetupError(AgentError):
    """The agent cannot work as set up: its server refuses every request as sent (tool calling switched off,
    a context window too small). The proposal is recorded as an agent error and the session ends, with a
    message that says what to change."""


class AgentExhausted(Exception):
    """The agent has nothing more to propose; the session ends cleanly."""


class Agent(ABC):
    name: str = ""

    def __init__(self, **options):
        self.options = options

    @abstractmethod
    def propose(self, context: Context) -> Proposal:
        ...


BUILTIN = {
    "search": "autoresearch.agents.search:SearchAgent",
    "scripted": "autoresearch.agents.scripted:ScriptedAgent",
    "claude": "autoresearch.agents.claude:ClaudeAgent",
    "claude-code": "autoresearch.agents.claude_code:ClaudeCodeAgent",
    "openai": "autoresearch.agents.openai_chat:OpenAIAgent",
    "hybrid": "autoresearch.agents.hybrid:HybridAgent",
}


def available() -> list[str]:
    return sorted({*BUILTIN, *(ep.name for ep in entry_points(group="autoresearch.agents"))})


def create(name: str, **options) -> Agent:
    """The agent registered as `name`, constructed with `options`; "A+B" is the hybrid of A (the LLM) and B."""
    if "+" in name:  # the hybrid, loaded by name as every built-in is: the registry never imports an agent
        llm, _, search = name.partition("+")
        return _load(BUILTIN["hybrid"])(llm=llm, search=search, **options)
    if name in BUILTIN:
        cls = _load(BUILTIN[name])
    else:
        found = [ep for ep in entry_points(group="autoresearch.agents") if ep.name == name]
        if not found:
            raise ValueError(f"unknown agent {name!r}; available: {', '.join(available())}")
        cls = found[0].load()
    if "settings" in options and not _accepts(cls, "settings"):
        options.pop("settings")  # [agent] settings go to the agents that take them
    return cls(**options)


def _load(spec: str) -> type:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _accepts(cls, name: str) -> bool:
    import inspect

    parameters = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
