"""What an agent is told before it proposes: the `agents.Context`, built from the ledger, git and the target.

One place for the loop (scheduler.py) to build it: the program,
the editable files at the parent, the history, the human's suggestions, the agent's own notes, the
protected files it may read (not data: text files under a size cap, none that `[sandbox] hide`
covers), and the harness's services (the check of edited code, the note recorder).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from . import scope, trial
from .agents import Context, Proposal
from .records import Experiment

if TYPE_CHECKING:
    from .session import Session

NOTES_SHOWN = 20  # the latest notes a proposal sees (the memory shows what fits its budget)
NOTE_CHARS = 600  # one note, at most
READ_ONLY_BYTES = 100_000  # a protected file larger than this is data, not code to read


def context(session: "Session", parent: Experiment, files: dict[str, str], pending: Iterable[Proposal] = (), *,
            history: Optional[tuple[Experiment, ...]] = None, suggestions: Optional[tuple] = None) -> Context:
    """The agent's view of the tag for a proposal on `parent`, whose editable files are `files`; `history` and
    `suggestions` where the caller read them (with the pending proposals, at one instant), else read here."""
    ledger, tag, target = session.ledger, session.tag, session.target

    def note(text: str):
        return ledger.add_note(tag, session.session_id, session.agent_name, " ".join(str(text).split())[:NOTE_CHARS])

    return Context(target.config, target.program(), files, parent, ledger.baseline(tag),
                   tuple(ledger.experiments(tag)) if history is None else history,
                   suggestions=tuple(ledger.pending_suggestions(tag)[:1]) if suggestions is None else suggestions,
                   pending=tuple(pending), notes=tuple(ledger.notes(tag, latest=NOTES_SHOWN)),
                   read_only=read_only(target, parent.commit), check=partial(trial.check, target, parent.commit),
                   note=note)


def read_only(target, commit: str) -> dict[str, str]:
    """{path: text} of the protected files at `commit` an agent may read: text (UTF-8) of at most
    READ_ONLY_BYTES, and not hidden from runs by `[sandbox] hide`."""
    config = target.config
    hidden = [(target.root / Path(p).expanduser()).resolve() for p in config.sandbox.hide]
    out = {}
    for entry in target.git.run("ls-tree", "-r", "-l", "-z", "--full-tree", commit).split("\0"):
        if not entry:
            continue
        info, path = entry.split("\t", 1)
        kind, size = info.split()[1], info.split()[3]
        if kind != "blob" or not size.isdigit() or int(size) > READ_ONLY_BYTES or not scope.is_protected(path, config):
            continue
        where = (target.root / path).resolve()
        if any(where == h or h in where.parents for h in hidden):
            continue
        try:
            out[path] = target.git.run_bytes("show", f"{commit}:{path}").decode("utf-8")
        except UnicodeDecodeError:  # binary: data
            continue
    return out
