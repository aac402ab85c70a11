"""The scripted agent: replays proposals from a JSON file, in order. For tests and demos.

    [{"description": "lower the LR", "knobs": {"MATRIX_LR": 0.01}},
     {"description": "rewrite", "write": {"train.py": "..."}, "delete": ["old.py"]},
     {"description": "tweak", "replace": [{"file": "train.py", "old": "x = 1", "new": "x = 2"}]},
     {"description": "agent fails", "error": "model returned garbage"},
     {"description": "as suggested: {suggestion}", "knobs": {"LR": 3.0}}]

"{suggestion}" in a description stands for the text of the suggestion the proposal was given
(`autoresearch suggest`; empty when there is none), which the proposal then counts as taken up.

Its position in the script is the number of experiments it already has in the ledger (and of its proposals
still waiting for a slot), so a resumed session continues with the next proposal, never repeating or skipping one.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import knobs as knob_edit
from . import Agent, AgentExhausted, Context, Proposal, ProposalError


class ScriptedAgent(Agent):
    name = "scripted"

    def __init__(self, script: str = "", **options):
        super().__init__(**options)
        if not script:
            raise ValueError("the scripted agent needs a script: --agent-option script=FILE")
        self.steps = json.loads(Path(script).read_text())
        if not isinstance(self.steps, list):
            raise ValueError(f"{script}: expected a JSON list of proposals")

    def propose(self, context: Context) -> Proposal:
        position = (sum(1 for e in context.history if e.agent == self.name)
                    + sum(1 for p in context.pending if p.meta.get("agent") == self.name))  # made, not yet recorded
        if position >= len(self.steps):
            raise AgentExhausted(f"the script's {len(self.steps)} proposals are all done")
        step = self.steps[position]
        if "error" in step:
            raise ProposalError(step["error"])
        files = dict(context.files)
        writes: dict = {}
        for path, content in step.get("write", {}).items():
            writes[path] = files[path] = content
        for path in step.get("delete", []):
            writes[path] = None
        for edit in step.get("replace", []):
            source = writes.get(edit["file"], files.get(edit["file"]))
            if source is None or source.count(edit["old"]) != 1:
                found = 0 if source is None else source.count(edit["old"])
                raise ProposalError(f"replace in {edit['file']}: the old text occurs {found} times, not once")
            writes[edit["file"]] = files[edit["file"]] = source.replace(edit["old"], edit["new"])
        for name, value in step.get("knobs", {}).items():
            knob = next(k for k in context.config.knobs if k.name == name)
            writes[knob.file] = files[knob.file] = knob_edit.put(knob, files[knob.file], value)
        description = step.get("description", f"scripted proposal {position + 1}")
        given = " / ".join(suggestion.text for suggestion in context.suggestions)
        return Proposal(description.replace("{suggestion}", given), writes,
                        meta={"agent": self.name, "suggestions": [suggestion.id for suggestion in context.suggestions]})
