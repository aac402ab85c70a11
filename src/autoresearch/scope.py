"""The scope rules: what a proposal may change. Checked by the harness on the real worktree.

A change is rejected before anything runs when it is empty, touches a protected file, leaves
the editable files, leaves a Python file that does not parse, or imports a package the target's
Python does not have (no new dependencies: the run could not install it, and should not try).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import pyast
from .config import CONFIG_FILE, Config
from .gitrepo import Change

# Protected whatever the configuration says: the contract itself.
ALWAYS_PROTECTED = (CONFIG_FILE, ".gitignore", ".autoresearch/*")


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(path, pattern) for pattern in patterns)


def is_protected(path: str, config: Config) -> bool:
    return matches(path, (*ALWAYS_PROTECTED, *config.files.protected))


def violation(changes: list[Change], worktree: Path, config: Config,
              before: Callable[[str], str] = lambda path: "") -> Optional[str]:
    """Why these changes must be rejected, or None when they are acceptable. `before(path)` is the
    file's text in the parent commit ("" for a new file)."""
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
                pyast.parse(source, filename=change.path)
            except SyntaxError as exc:
                return f"{change.path} does not parse: {exc.msg} (line {exc.lineno})"
            missing = unavailable_imports(source, before(change.path), Path(worktree), change.path)
            if missing:
                return (f"{change.path} imports {', '.join(missing)}, not installed for the target: "
                        "no new dependencies")
    return None


def imported_modules(source: str) -> set[str]:
    """Top-level names of the modules `source` imports (absolute imports and literal import_module calls)."""
    names = set()
    try:
        tree = pyast.parse(source)
    except SyntaxError:
        return names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names.add(node.args[0].value.split(".")[0])
    return names


def unavailable_imports(source: str, before: str, root: Path, path: str) -> list[str]:
    """Modules newly imported by `source` (the file `path` under `root`; `before` is its previous text) that
    neither the target's Python nor the target itself provides. Imports that were there before are left
    alone: a guarded optional import stays acceptable."""
    folders = [root / parent for parent in Path(path).parents]  # the file's folder up to the target's root
    missing = []
    for name in sorted(imported_modules(source) - imported_modules(before)):
        local = any((folder / f"{name}.py").exists() or (folder / name).is_dir() for folder in folders)
        if not local and name not in sys.stdlib_module_names and importlib.util.find_spec(name) is None:
            missing.append(name)
    return missing


def write_inside(root: Path, writes) -> None:
    """Write {relative path: text, or None to delete} under `root`: never outside it, never into .git (ValueError)."""
    root = Path(root).resolve()
    for relative, content in writes.items():
        path = (root / relative).resolve()
        if root not in path.parents or ".git" in Path(relative).parts:
            raise ValueError(f"{relative!r} is not a path inside the target")
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
