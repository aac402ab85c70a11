"""Every git operation the harness makes, behind one small class (real git, via subprocess)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Harness commits carry this identity unless the user's environment names one.
_IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch", "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
             "GIT_COMMITTER_NAME": "autoresearch", "GIT_COMMITTER_EMAIL": "autoresearch@localhost"}


# Configuration that makes git run programs (hooks, fsmonitor) is overridden for every harness call:
# a training run without a sandbox can write into .git, and must not get code run by the harness.
# No automatic gc or maintenance either: with several slots, git runs in several worktrees at once.
_NO_PROGRAMS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "gc.auto=0",
                "-c", "maintenance.auto=false")


class GitError(Exception):
    pass


@dataclass(frozen=True)
class Change:
    status: str  # A (added), M (modified), D (deleted), T (type changed)
    path: str


class Git:
    """A repository (or one of its worktrees) at `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _exec(self, *args: str, input: Optional[str] = None) -> subprocess.CompletedProcess:
        env = {**_IDENTITY, **os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        return subprocess.run(["git", *_NO_PROGRAMS, "-C", str(self.root), *args], input=input, capture_output=True,
                              text=True, env=env)

    def run_bytes(self, *args: str) -> bytes:
        """A git command's output as bytes (an archive)."""
        env = {**_IDENTITY, **os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        result = subprocess.run(["git", *_NO_PROGRAMS, "-C", str(self.root), *args], capture_output=True, env=env)
        if result.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.root}: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def run(self, *args: str, input: Optional[str] = None, check: bool = True) -> str:
        result = self._exec(*args, input=input)
        if check and result.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed in {self.root}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout

    # ---------------------------------------------------------------- repository

    @staticmethod
    def init(root: Path) -> "Git":
        Path(root).mkdir(parents=True, exist_ok=True)
        git = Git(root)
        git.run("init", "-q")
        git.run("checkout", "-q", "-b", "main", check=False)
        return git

    def is_repo(self) -> bool:
        return self.run("rev-parse", "--is-inside-work-tree", check=False).strip() == "true"

    def commit_all(self, message: str) -> str:
        self.run("add", "-A")
        self.run("commit", "-q", "--no-verify", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.run("rev-parse", "HEAD").strip()

    def resolve(self, ref: str) -> Optional[str]:
        out = self.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False).strip()
        return out or None

    def update_ref(self, ref: str, new: str, old: Optional[str] = None) -> None:
        """Point `ref` at `new`; with `old`, only if it still points there (compare-and-swap)."""
        self.run("update-ref", ref, new, *([old] if old else []))

    def refs(self) -> dict[str, str]:
        """Every ref and HEAD, with the object each points at."""
        out = self.run("for-each-ref", "--format=%(refname) %(objectname)")
        refs = dict(line.split(" ", 1) for line in out.splitlines() if line)
        head = self.resolve("HEAD")
        if head:
            refs["HEAD"] = head
        return refs

    def exclude(self, pattern: str) -> None:
        """Make git ignore `pattern` in this repository without touching tracked files."""
        info = Path(self.run("rev-parse", "--git-common-dir").strip())
        if not info.is_absolute():
            info = self.root / info
        exclude = info / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if pattern not in lines:
            exclude.write_text("\n".join([*lines, pattern]) + "\n")

    def dirty_paths(self) -> list[str]:
        out = self.run("status", "--porcelain", "-z", "--untracked-files=no")
        return [entry[3:] for entry in out.split("\0") if entry]

    # ---------------------------------------------------------------- worktrees

    def add_worktree(self, path: Path, commit: str) -> "Git":
        """A fresh detached worktree at `path` (an old one there is removed first)."""
        path = Path(path)
        self.run("worktree", "remove", "--force", str(path), check=False)
        if path.exists():
            import shutil
            shutil.rmtree(path)
        self.run("worktree", "prune")
        self.run("worktree", "add", "-q", "--detach", "--force", str(path), commit)
        return Git(path)

    def reset_to(self, commit: str) -> None:
        """Make this worktree exactly `commit`: tracked files restored, untracked files removed."""
        lock = Path(self.run("rev-parse", "--git-dir").strip())
        lock = (lock if lock.is_absolute() else self.root / lock) / "index.lock"
        if lock.exists():  # left by a git process killed with the harness; these worktrees are ours alone
            lock.unlink()
        self.run("checkout", "-q", "--detach", "--force", commit)
        self.run("clean", "-q", "-fdx")

    def stage_changes(self) -> list[Change]:
        """Stage everything in the worktree and list what differs from HEAD."""
        self.run("add", "-A")
        out = self.run("diff", "--cached", "--name-status", "--no-renames", "-z").split("\0")
        return [Change(status[0], path) for status, path in zip(out[0::2], out[1::2]) if status]

    def staged_diff(self) -> tuple[str, int, int]:
        """The staged change as a unified diff, with lines added and removed."""
        added = removed = 0
        for line in self.run("diff", "--cached", "--numstat", "--no-renames").splitlines():
            a, r, _ = line.split("\t", 2)
            added += int(a) if a.isdigit() else 0
            removed += int(r) if r.isdigit() else 0
        return self.run("diff", "--cached", "--no-renames"), added, removed

    # ---------------------------------------------------------------- changes between commits (several slots)

    def patch(self, base: str, commit: Optional[str] = None, context: int = 3) -> str:
        """The change from `base` to `commit` (None: to what is staged) as a patch `apply_patch` can replay."""
        options = ("--full-index", "--binary", "--no-renames", f"-U{context}")
        return self.run("diff", *options, base, commit) if commit else self.run("diff", "--cached", *options, base)

    def apply_patch(self, patch: str, zero_context: bool = False) -> Optional[str]:
        """Apply `patch` to this worktree and stage it, merging three-way where its context moved (or, for a patch
        without context lines, where the lines it removes are); None when it applied, else what conflicted (the
        worktree is then left to be reset)."""
        how = ("--unidiff-zero",) if zero_context else ("--3way",)
        result = self._exec("apply", *how, "--index", "--whitespace=nowarn", input=patch)
        if result.returncode == 0:
            return None
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        conflicts = [line.split("U ", 1)[1] for line in lines if line.startswith("U ")]
        if conflicts:
            return f"conflict in {', '.join(conflicts)}"
        return lines[-1] if lines else f"git apply exited with code {result.returncode}"

    def files_at(self, commit: str, keep) -> dict[str, str]:
        """{path: text} of the files of `commit` for which keep(path) is true."""
        paths = self.run("ls-tree", "-r", "-z", "--name-only", "--full-tree", commit).split("\0")
        return {path: self.run("show", f"{commit}:{path}") for path in paths if path and keep(path)}
