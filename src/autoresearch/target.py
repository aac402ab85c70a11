"""A target on disk: its repository, its configuration and the harness's state directory.

    myresearch/
      autoresearch.toml, program.md, train.py, ...   the target (git)
      .autoresearch/                                  the harness's (git-ignored)
        ledger.sqlite   data/   runs/   worktrees/
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import config as config_module
from .config import Config
from .gitrepo import Git

STATE_DIR = ".autoresearch"
TEMPLATES = ("gpt",)


@dataclass
class Target:
    root: Path
    config: Config

    @classmethod
    def open(cls, root: Path) -> "Target":
        root = Path(root).resolve()
        return cls(root, config_module.load(root))

    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def runs(self) -> Path:
        return self.state / "runs"

    @property
    def worktrees(self) -> Path:
        return self.state / "worktrees"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    @property
    def ledger_path(self) -> Path:
        return self.state / "ledger.sqlite"

    @property
    def git(self) -> Git:
        return Git(self.root)

    def program(self) -> str:
        path = self.root / self.config.target.program
        return path.read_text() if path.exists() else ""


def cache_dir() -> Path:
    return Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "autoresearch")


def command_argv(command: str) -> list[str]:
    """A configured command as argv; a leading `python` means the interpreter running autoresearch."""
    import shlex

    argv = shlex.split(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def init(directory: Path, template: str = "gpt") -> Path:
    """Create `directory` as a git repository holding a built-in target, committed."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; built in: {', '.join(TEMPLATES)}")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; autoresearch init never overwrites files")
    source = resources.files("autoresearch") / "templates" / template
    directory.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name.startswith("__pycache__"):
            continue
        name = ".gitignore" if item.name == "gitignore" else item.name
        with resources.as_file(item) as path:
            shutil.copyfile(path, directory / name)
    git = Git.init(directory)
    git.commit_all(f"autoresearch init: the built-in {template} target")
    return directory
