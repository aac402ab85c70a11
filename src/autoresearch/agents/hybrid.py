"""The hybrid agent: code changes from an LLM, knob tuning from the numeric search, interleaved.

    autoresearch run --agent claude+search        # or openai+search, claude-code+search; `hybrid` = claude+search
    autoresearch run --agent hybrid --agent-option search_per_llm=3

After each LLM proposal, `[agent] search_per_llm` proposals (default 2) come from the search
agent, which tunes the knobs on the current best code: it is told only the experiments since the
last kept LLM change (the one that made the current code) and its own proposals since, so
measurements on older code do not mislead it. The search adopts the constants the LLM introduces
or changes: an UPPERCASE numeric constant that a kept LLM change added or changed becomes a knob,
with the range its comment declares (`NAME = 0.02  # search: 0.001..0.1 log`) or else one derived
from its value. Whose turn it is comes from the ledger (each experiment records which agent
proposed it), so a resumed session keeps the rhythm.
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from typing import Optional

from .. import knobs as knob_edit, pyast
from ..config import Knob
from ..records import Experiment, State
from . import Agent, AgentExhausted, Context, Proposal
from .llm import settings_from

MAX_ADOPTED = 6  # constants adopted from the LLM's changes, the most recent first
_RANGE = re.compile(r"#\s*search:\s*([-+0-9.eE_]+)\s*\.\.\s*([-+0-9.eE_]+)\s*(log)?", re.I)
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")


class HybridAgent(Agent):
    name = "hybrid"

    def __init__(self, llm: str = "claude", search: str = "search", settings=None, **options):
        from . import create

        self.settings, rest = settings_from(settings, options)
        super().__init__(**rest)
        self.llm_name, self.search_name = llm, search
        self.name = f"{llm}+{search}"
        self.llm = create(llm, settings=self.settings, **rest)
        self.search: Optional[Agent] = None
        self._search_key: Optional[tuple] = None

    def propose(self, context: Context) -> Proposal:
        if not context.suggestions and self._search_turn(context.history, context.pending):  # a suggestion is the LLM's
            try:
                return self._tune(context)
            except AgentExhausted:
                pass  # nothing to tune: the LLM proposes
        proposal = self.llm.propose(context)
        return replace(proposal, meta={**proposal.meta, "agent": proposal.meta.get("agent") or self.llm_name})

    # ---------------------------------------------------------------- whose turn

    def _search_turn(self, history: tuple[Experiment, ...], pending: tuple = ()) -> bool:
        """LLM, then search_per_llm search proposals, then the LLM again (experiments by anyone else end a run);
        proposals still waiting for a slot count as made."""
        if self.settings.search_per_llm == 0:
            return False
        proposed = [e.agent for e in history if e.state is not State.BASELINE]
        proposed += [p.meta.get("agent") for p in pending]
        if not proposed:
            return False
        trailing = 0
        for agent in reversed(proposed):
            if agent != self.search_name:
                break
            trailing += 1
        return trailing < self.settings.search_per_llm

    # ---------------------------------------------------------------- the search's turn

    def _tune(self, context: Context) -> Proposal:
        history = context.history
        epoch = next((e for e in reversed(history) if e.state is State.KEPT and e.agent == self.llm_name),
                     next((e for e in history if e.state is State.BASELINE), None))
        declared = list(context.config.knobs)
        adopted = adopted_knobs(context, self.llm_name, {k.name for k in declared}) if self.settings.adopt_knobs else []
        knobs = declared + adopted
        if not knobs:
            raise AgentExhausted("no knobs")
        since = [e for e in history if epoch is not None and (e.index == epoch.index or (
            e.index > epoch.index and e.agent == self.search_name))]
        if adopted:
            since = _with_values(since, adopted, context)
        key = (epoch.index if epoch else None, tuple(k.name for k in knobs))
        if key != self._search_key:  # new code or new knobs: measurements on the old ones no longer apply
            from . import create

            self.search, self._search_key = create(self.search_name, settings=self.settings), key
        tuned = replace(context, config=context.config.model_copy(update={"knobs": knobs}), history=tuple(since))
        proposal = self.search.propose(tuned)
        return replace(proposal, meta={**proposal.meta, "agent": self.search_name})


# ---------------------------------------------------------------------------- adopted knobs


def _assignments(diff: str, sign: str) -> dict[tuple[str, str], object]:
    """(file, NAME) -> value for the top-level numeric constants a diff adds ('+') or removes ('-')."""
    found, path = {}, ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[4:].strip().removeprefix("b/")
            continue
        if line.startswith(("---", "+++")) or not line.startswith(sign) or not path.endswith(".py"):
            continue
        text = line[1:]
        if not text or text[0].isspace():
            continue
        try:
            tree = pyast.parse(text.split("#")[0])
        except SyntaxError:
            continue
        node = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if _CONSTANT.match(name) and isinstance(value, (int, float)) and not isinstance(value, bool):
                found[(path, name)] = value
    return found


def adopted_knobs(context: Context, llm: str, declared: set[str]) -> list[Knob]:
    """Knobs for the numeric constants that kept LLM changes added or changed, newest first."""
    seen: dict[str, Knob] = {}
    for experiment in reversed(context.history):
        if experiment.state is not State.KEPT or experiment.agent != llm:
            continue
        for (path, name), _ in _assignments(experiment.diff, "+").items():
            if name in declared or name in seen or path not in context.files:
                continue
            knob = _knob(context.files[path], path, name)
            if knob is not None:
                seen[name] = knob
        if len(seen) >= MAX_ADOPTED:
            break
    return list(seen.values())[:MAX_ADOPTED]


def _knob(source: str, path: str, name: str) -> Optional[Knob]:
    """A knob for NAME as it is now: the range from its `# search: LOW..HIGH [log]` comment, or derived."""
    try:
        value = knob_edit.read(source, name)
    except (KeyError, ValueError, SyntaxError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    line = next((l for l in source.splitlines() if re.match(rf"{name}\s*=", l)), "")
    declared = _RANGE.search(line)
    try:
        if declared:
            low, high = float(declared.group(1)), float(declared.group(2))
            kind = "int" if isinstance(value, int) else "float"
            return Knob(name=name, file=path, type=kind, low=low, high=high, log=bool(declared.group(3)))
        if value <= 0:
            return None
        if isinstance(value, int):
            return Knob(name=name, file=path, type="int", low=max(1, value // 4), high=max(value * 4, value + 3))
        high = (1 + value) / 2 if value < 1 else value * 10  # fractions stay below 1
        return Knob(name=name, file=path, low=value / 4 if value < 1 else value / 10, high=high, log=True)
    except ValueError:
        return None


def _with_values(experiments: list[Experiment], knobs: list[Knob], context: Context) -> list[Experiment]:
    """The experiments with the adopted knobs' values filled in, read back from the diffs.

    The values at the current best are read from its files; walking the kept chain back, each kept
    diff's removed lines give the values before it; an experiment's own added lines give its values."""
    names = {k.name for k in knobs}
    at_commit: dict[Optional[str], dict] = {}
    values = {k.name: knob_edit.read(context.files[k.file], k.name) for k in knobs}
    for experiment in reversed(context.history):
        if experiment.state not in (State.KEPT, State.BASELINE):
            continue
        at_commit[experiment.commit] = dict(values)
        for (_, name), value in _assignments(experiment.diff, "-").items():
            if name in names:
                values[name] = value
    filled = []
    for experiment in experiments:
        own = dict(at_commit.get(experiment.commit) or at_commit.get(experiment.parent) or {})
        own.update({name: value for (_, name), value in _assignments(experiment.diff, "+").items() if name in names})
        filled.append(replace(experiment, knobs={**own, **experiment.knobs}))
    return filled
