"""The checks the harness makes around every run, which nothing inside the run can influence.

- Before a run: the experiment's commit carries the protected files exactly as the tag's
  base commit has them (compared by git blob hash), and its worktree is that commit.
- After the training command, before the trusted evaluator runs: the worktree is still that
  commit, no tracked file changed (a training run that rewrites evaluate.py, or its own
  train.py which the evaluator imports, is caught here) and no new importable file appeared
  (a `torch.py` dropped beside evaluate.py would be imported in place of the real one).
- After the run: the research branch and the experiment's own ref are where the harness left
  them (a run that calls `git` to move them is caught, and they are put back).
- Metric claims: a number the training command prints or writes under the metric's name is
  never used; when it disagrees with the evaluator, that is recorded.
"""

from __future__ import annotations

import threading
from typing import Optional

from . import scope
from .config import Config
from .gitrepo import Git

# Files Python would import or execute if they appeared in the worktree: a run may write data
# files there, but not these.
IMPORTABLE = (".py", ".pyc", ".pyo", ".so", ".pyd", ".pth")


def protected_blobs(git: Git, commit: str, config: Config) -> dict[str, str]:
    """{path: blob hash} of the protected files tracked in `commit`."""
    blobs = {}
    for entry in git.run("ls-tree", "-r", "-z", "--full-tree", commit).split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            if scope.is_protected(path, config):
                blobs[path] = meta.split()[2]
    return blobs


def commit_violation(git: Git, commit: str, reference: dict[str, str], config: Config) -> Optional[str]:
    """Why `commit`'s protected files differ from the reference ones, or None."""
    current = protected_blobs(git, commit, config)
    for path, blob in sorted(reference.items()):
        if path not in current:
            return f"protected file {path} is missing from the commit"
        if current[path] != blob:
            return f"protected file {path} differs from the tag's base commit (blob {current[path][:9]}, " \
                   f"expected {blob[:9]})"
    for path in sorted(set(current) - set(reference)):
        return f"new protected file {path} in the commit"
    return None


def worktree_violation(worktree: Git, commit: str) -> Optional[str]:
    """What a run changed in its worktree that the evaluator could be fooled by, or None."""
    if worktree.git_dir is not None and not worktree.dot_git_intact():
        return "the worktree's .git file was rewritten"
    head = worktree.resolve("HEAD")
    if head != commit:
        return f"the worktree's HEAD moved from {commit[:9]} to {(head or 'nothing')[:9]}"
    changed, created = [], []
    status = worktree.run("status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored")
    for entry in status.split("\0"):
        if not entry:
            continue
        code, path = entry[:2], entry[3:]
        if code in ("??", "!!"):
            if path.endswith(IMPORTABLE):
                created.append(path)
        else:
            changed.append(path)
    if changed:
        return f"the run changed tracked file{'s' if len(changed) > 1 else ''} {', '.join(sorted(changed)[:5])}"
    if created:
        return f"the run created importable file{'s' if len(created) > 1 else ''} {', '.join(sorted(created)[:5])}"
    return None


def restore_refs(git: Git, before: dict[str, str]) -> list[str]:
    """Put every ref back as `before` (Git.refs) had it; say what a run had moved, made or deleted."""
    after = git.refs()
    changes = []
    for ref in sorted((set(before) | set(after)) - {"HEAD"}):
        old, new = before.get(ref), after.get(ref)
        if old == new:
            continue
        if old is None:
            git.run("update-ref", "-d", ref)
            changes.append(f"{ref} created")
        else:
            git.update_ref(ref, old)
            changes.append(f"{ref} moved to {new[:9] if new else 'nothing'}")
    head = git.resolve("HEAD")
    if head != before.get("HEAD"):  # the user's checkout itself was switched: report it, never rewrite it
        changes.append(f"the repository's HEAD moved to {head[:9] if head else 'nothing'}")
    return changes


def metric_claim(claimed: Optional[float], measured: Optional[float], name: str,
                 where: str = "the training output") -> Optional[str]:
    """A note when `where` claims a value of the metric that disagrees with the evaluator's."""
    if claimed is None:
        return None
    if measured is not None and abs(claimed - measured) <= 1e-6 + 1e-3 * abs(measured):
        return None
    shown = f"{measured:.6g}" if measured is not None else "nothing"
    return f"{where} claims {name} {claimed:.6g}; the evaluator measured {shown}; the claim was ignored"



HARNESS_REFS = ("refs/heads/autoresearch/", "refs/autoresearch/")


class RefGuard:
    """The refs as the harness left them, while runs may be in flight beside the harness's own updates.

    Every ref update the harness makes goes through `update`, so the research branches and experiment refs are
    compared after a run with what the harness wrote (not with a snapshot from when the run started, which a
    concurrent keep would make stale); every other ref is compared with the snapshot (`before`).
    """

    def __init__(self, git: Git):
        self.git = git
        self.lock = threading.Lock()
        self.expected = {ref: sha for ref, sha in git.refs().items() if ref.startswith(HARNESS_REFS)}

    def update(self, ref: str, new: str, old: Optional[str] = None) -> None:
        with self.lock:
            self.git.update_ref(ref, new, old)
            self.expected[ref] = new

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return self.git.refs()

    def restore(self, before: dict[str, str]) -> list[str]:
        """Put back whatever a run changed (restore_refs); what it had moved, made or deleted."""
        with self.lock:
            reference = {ref: sha for ref, sha in before.items() if not ref.startswith(HARNESS_REFS)}
            return restore_refs(self.git, {**reference, **self.expected})
