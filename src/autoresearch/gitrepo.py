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
    """A repository at `root`, or one of its linked worktrees with `git_dir` its administrative directory (in the
    repository's .git). A worktree's own `.git` file, which points there, is never read: a run may write its
    worktree, and a `.git` it rewrote could lead the harness's git to a repository (and configuration, which can
    name programs to run) of its making."""

    def __init__(self, root: Path, git_dir: Optional[Path] = None):
        self.root = Path(root)
        self.git_dir = git_dir

    def _argv(self, args: tuple) -> list[str]:
        where = ("--git-dir", str(self.git_dir), "--work-tree", str(self.root)) if self.git_dir else ()
        return ["git", *_NO_PROGRAMS, *where, "-C", str(self.root), *args]

    def _exec(self, *args: str, input: Optional[str] = None) -> subprocess.CompletedProcess:
        env = {**_IDENTITY, **os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        return subprocess.run(self._argv(args), input=input, capture_output=True, text=True, env=env)

    def run_bytes(self, *args: str) -> bytes:
        """A git command's output as bytes (an archive)."""
        env = {**_IDENTITY, **os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        result = subprocess.run(self._argv(args), capture_output=True, env=env)
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
        """A detached worktree at `path`, exactly `commit`. One of ours already there, intact, is reset and kept (a
        warm server's sandbox is bound to the directory: a new one would need a new server); anything else there
        is removed and the worktree made afresh."""
        path = Path(path)
        kept = self.worktree(path)
        if kept is not None and kept.dot_git_intact():
            try:
                kept.reset_to(commit)
                return kept
            except GitError:
                pass
        self.run("worktree", "remove", "--force", str(path), check=False)
        if path.exists() or path.is_symlink():
            import shutil
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        self.run("worktree", "prune")
        self.run("worktree", "add", "-q", "--detach", "--force", str(path), commit)
        made = self.worktree(path)
        if made is None:
            raise GitError(f"git worktree add made no worktree at {path}")
        return made

    def worktree(self, path: Path) -> Optional["Git"]:
        """This repository's linked worktree at `path`, found from the repository's side (its administrative
        directories each record their worktree's path), or None."""
        common = Path(self.run("rev-parse", "--git-common-dir").strip())
        admin = (common if common.is_absolute() else self.root / common) / "worktrees"
        dot_git = os.path.realpath(Path(path) / ".git")
        for entry in admin.iterdir() if admin.is_dir() else ():
            try:
                recorded = (entry / "gitdir").read_text().strip()
            except OSError:
                continue
            if os.path.realpath(entry / recorded) == dot_git:
                return Git(Path(path), git_dir=entry.resolve())
        return None

    def dot_git_intact(self) -> bool:
        """Does this worktree's `.git` file still point at its administrative directory (as git wrote it)?"""
        dot_git = self.root / ".git"
        if self.git_dir is None or dot_git.is_symlink() or not dot_git.is_file():
            return False
        try:
            text = dot_git.read_text()
        except (OSError, UnicodeDecodeError):
            return False
        if not text.startswith("gitdir: ") or text.count("\n") > 1:
            return False
        return os.path.realpath(self.root / text[len("gitdir: "):].strip()) == os.path.realpath(self.git_dir)

    def reset_to(self, commit: str) -> None:
        """Make this worktree exactly `commit`: tracked files restored, untracked files removed, its `.git` file
        pointing where git made it point."""
        if self.git_dir is not None and not self.dot_git_intact():
            dot_git = self.root / ".git"
            if dot_git.is_dir() and not dot_git.is_symlink():
                import shutil
                shutil.rmtree(dot_git)
            dot_git.unlink(missing_ok=True)
            dot_git.write_text(f"gitdir: {self.git_dir}\n")
        lock = Path(self.run("rev-parse", "--git-dir").strip())
        lock = (lock if lock.is_absolute() else self.root / lock) / "index.lock"
        if lock.exists():  # left by a git process killed with the harness; these worktrees are ours alone
            lock.unlink()
        self.run("checkout", "-q", "--detach", "--force", commit)
        self.run("clean", "-q", "-ffdx")  # -ff: a repository a run made in it goes too

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
