"""A target on disk: its repository, its configuration and the harness's state directory.

    myresearch/
      autoresearch.toml, program.md, train.py, ...   the target (git)
      .autoresearch/                                  the harness's (git-ignored)
        ledger.sqlite   data/   runs/   worktrees/
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import config as config_module, programs
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


def prepare(target: Target, data: Optional[str] = None, vocab: Optional[int] = None, extra: list = ()) -> int:
    """`autoresearch prepare`: run the target's prepare command (`--data`, `--vocab` and any further flags passed
    on); its exit status, 0 when there is nothing to prepare."""
    command = target.config.commands.prepare
    if not command:
        print("this target declares no prepare command; nothing to do")
        return 0
    argv = (command_argv(command) + (["--data", data] if data else []) + (["--vocab", str(vocab)] if vocab else [])
            + list(extra))
    env = {**os.environ, "AUTORESEARCH_DATA": str(target.data), "AUTORESEARCH_CACHE": str(cache_dir())}
    target.data.mkdir(parents=True, exist_ok=True)
    code = subprocess.call(argv, cwd=target.root, env=env)
    if code != 0:
        print(f"prepare failed: `{' '.join(argv)}` exited with code {code}", file=sys.stderr)
        return 1
    return 0


def init(directory: Path, template: str = "gpt", program: str = programs.DEFAULT) -> Path:
    """Create `directory` as a git repository holding a built-in target with one of its programs, committed."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; built in: {', '.join(TEMPLATES)}")
    files = programs.files(template, program)
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; autoresearch init never overwrites files")
    directory.mkdir(parents=True, exist_ok=True)
    for name, item in files.items():
        (directory / name).write_bytes(item.read_bytes())
    git = Git.init(directory)
    what = f"the built-in {template} target" + (f", program {program}" if program != programs.DEFAULT else "")
    git.commit_all(f"autoresearch init: {what}")
    return directory
