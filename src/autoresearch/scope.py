"""The scope rules: what a proposal may change. Checked by the harness on the real worktree.

A change is rejected before anything runs when it is empty, touches a protected file, leaves
the editable files, or leaves a Python file that does not parse.
"""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Optional

from .config import CONFIG_FILE, Config
from .gitrepo import Change

# Protected whatever the configuration says: the contract itself.
ALWAYS_PROTECTED = (CONFIG_FILE, ".gitignore", ".autoresearch/*")


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(path, pattern) for pattern in patterns)


def is_protected(path: str, config: Config) -> bool:
    return matches(path, (*ALWAYS_PROTECTED, *config.files.protected))


def violation(changes: list[Change], worktree: Path, config: Config) -> Optional[str]:
    """Why these changes must be rejected, or None when they are acceptable."""
    if not changes:
        return "empty: the proposal changes nothing"
    for change in changes:
        if is_protected(change.path, config):
            verb = "deletes" if change.status == "D" else "edits"
            return f"{verb} protected file {change.path}"
        if not matches(change.path, config.files.editable):
            return f"{change.path} is outside the editable files ({', '.join(config.files.editable)})"
    for change in changes:
        if change.status != "D" and change.path.endswith(".py"):
            source = (Path(worktree) / change.path).read_text(errors="replace")
            try:
                ast.parse(source, filename=change.path)
            except SyntaxError as exc:
                return f"{change.path} does not parse: {exc.msg} (line {exc.lineno})"
    return None
