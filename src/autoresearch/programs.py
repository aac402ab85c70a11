"""Research programs: what the agent researches, and what decides. `autoresearch init DIR --program NAME`.

A program is a target's files: which the agent may edit, which it may never touch, the
instructions it reads (program.md), the metric, the budget, the knobs and the constraints
(autoresearch.toml). The built-in ones share the gpt target (templates/gpt: model and training
loop, sampler, evaluator, data preparation) and differ by an overlay, templates/programs/<name>/,
whose files replace or join the base's:

    train      the model, optimizer and schedule (train.py); the base as it is
    data       the training data: sources, mixture, filters, order (sampler.py); model and loop frozen
    synthetic  a generator of synthetic training documents and their share (synthetic.py)
    speedrun   tokens to reach a target val_bpb, scored by the evaluator on checkpoints (train.py)

docs/programs/ has a page for each, and says how to write a new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

DEFAULT = "train"


@dataclass(frozen=True)
class Program:
    name: str
    summary: str
    overlay: Optional[str] = None  # folder under templates/programs/; None: the base template unchanged


PROGRAMS = {program.name: program for program in (
    Program("train", "architecture, optimizer and schedule: the agent edits train.py"),
    Program("data", "data mixture, filtering, deduplication and curriculum: the agent edits sampler.py; "
                    "model and training loop frozen", "data"),
    Program("synthetic", "synthetic training data: the agent edits a generator and its share of the training "
                         "tokens (synthetic.py); generation counts against the budget", "synthetic"),
    Program("speedrun", "tokens to reach a target val_bpb, scored by the trusted evaluator on checkpoints taken "
                        "at fixed intervals: the agent edits train.py", "speedrun"),
)}


def get(name: str) -> Program:
    if name not in PROGRAMS:
        raise ValueError(f"unknown program {name!r}; built in: {', '.join(PROGRAMS)}")
    return PROGRAMS[name]


def files(template: str, program: str = DEFAULT) -> "dict[str, Traversable]":
    """{file name in the new target: its source}: the template's files with the program's overlay on top."""
    templates = resources.files("autoresearch") / "templates"
    chosen = get(program)
    found: dict = {}
    folders = [templates / template] + ([templates / "programs" / chosen.overlay] if chosen.overlay else [])
    for folder in folders:
        for item in folder.iterdir():
            if item.is_file() and not item.name.endswith((".pyc", ".pyo")):
                found[".gitignore" if item.name == "gitignore" else item.name] = item
    return found
