"""`autoresearch export`: what happened, in formats other tools read, and the wins as clean commits.

`--tsv FILE` writes karpathy/autoresearch's results.tsv: `commit val_bpb memory_gb status
description`, tab separated, status keep / discard / crash (rejected, timed-out and interrupted
experiments count as crash, with the reason in the description; the metric column is named after
the target's metric).

`--branch NAME` and `--patches DIR` hand the kept chain over for review: one commit per kept
change, replayed on the tag's base commit, each message giving the hypothesis, the
measured effect and its uncertainty. They are made with git plumbing (`commit-tree`, a new ref,
`format-patch`): the user's branch, index and worktree are never touched, and an existing
branch is never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .config import Config
from .gitrepo import Git, GitError
from .ledger import Ledger
from .records import Experiment, State

_STATUS = {State.BASELINE: "keep", State.KEPT: "keep", State.DISCARDED: "discard",
           State.SUPERSEDED: "discard"}  # won, but another win came first: its change was stacked on that one


def tsv(ledger: Ledger, tag: str, metric_name: str) -> str:
    rows = [f"commit\t{metric_name}\tmemory_gb\tstatus\tdescription"]
    for e in ledger.experiments(tag):
        if not e.state.final:
            continue
        peaks = [r.peak_memory_mb for r in e.runs if r.peak_memory_mb]
        memory_gb = max(peaks) / 1024 if peaks else 0.0
        status = _STATUS.get(e.state, "crash")
        description = e.description if e.state in (State.BASELINE, State.KEPT, State.DISCARDED) else \
            f"{e.description} [{e.state.value}: {e.reason}]"
        description = " ".join(description.split())  # one line, no tabs
        rows.append(f"{(e.commit or '-------')[:7]}\t{(e.metric or 0.0):.6f}\t{memory_gb:.1f}\t{status}\t{description}")
    return "\n".join(rows) + "\n"


def write_tsv(ledger: Ledger, tag: str, metric_name: str, path: Path) -> int:
    text = tsv(ledger, tag, metric_name)
    Path(path).write_text(text)
    return text.count("\n") - 1


# ---------------------------------------------------------------------------- the kept chain as commits


class ExportError(Exception):
    """The export cannot be made as asked; the message says why."""


def commit_message(experiment: Experiment, row: dict, parent: Optional[Experiment], config: Config) -> str:
    """Hypothesis, effect and uncertainty of one kept change, as a commit message."""
    name = config.metric.name
    lines = [" ".join(experiment.description.split()) or f"experiment #{experiment.index}", "",
             f"Hypothesis: {experiment.description.strip()}"]
    if parent is not None and parent.ok and experiment.ok:
        relative = f", {100 * row['effect'] / abs(parent.metric):.2f}%" if parent.metric else ""
        lines.append(f"Effect: {name} {parent.metric:.6g} -> {experiment.metric:.6g} "
                     f"({experiment.metric - parent.metric:+.4g}; {row['effect']:+.4g} better{relative}, "
                     f"{config.metric.goal})")
    parent_row = row.get("parent_stats")
    if row["effect_se"] and row["effect"] is not None:
        spread = []
        for label, stats in (("", row), ("parent ", parent_row)):
            if stats and stats["sd"] is not None:
                spread.append(f"{label}{stats['metric']:.6g} ± {stats['sd']:.2g} over {stats['seeds']} seeds")
        lines.append(f"Uncertainty: {name} {', '.join(spread) + '; ' if spread else ''}effect {row['effect']:+.4g} "
                     f"± {row['effect_se']:.2g} (standard error, {row['effect'] / row['effect_se']:.1f} se)")
    else:
        lines.append(f"Uncertainty: not measured: {row['seeds']} seed(s) for this change; "
                     "`autoresearch verify` or more seeds tell how much of the effect is noise")
    if experiment.reason:
        lines.append(f"Decision: {experiment.reason}")
    lines += ["", f"autoresearch {experiment.tag}: experiment #{experiment.index}, proposed by {experiment.agent}, "
              f"+{experiment.lines_added} -{experiment.lines_removed} lines; research commit {experiment.commit}"]
    return "\n".join(lines) + "\n"


def replay(git: Git, ledger: Ledger, tag: str, config: Config) -> tuple[str, list[str]]:
    """The kept chain as new commits on the base commit, oldest first: (base, [commit, ...]).

    Each new commit has the tree its experiment was measured on, so the last one is exactly the
    best commit's code, whatever the research history looked like."""
    from .observe import rows

    experiments = ledger.experiments(tag)
    kept = [e for e in experiments if e.state is State.KEPT]
    if not kept:
        raise ExportError(f"tag {tag!r} has no kept change yet: nothing to export")
    by_index = {r["id"]: r for r in rows(experiments, config)}
    by_commit = {e.commit: e for e in experiments if e.state in (State.BASELINE, State.KEPT)}
    base = ledger.tag(tag)["base_commit"]
    head, commits = base, []
    for experiment in kept:
        row = dict(by_index[experiment.index])
        parent = by_commit.get(experiment.parent)
        if parent is not None:
            row["parent_stats"] = by_index[parent.index]
        tree = git.run("rev-parse", f"{experiment.commit}^{{tree}}").strip()
        head = git.run("commit-tree", tree, "-p", head,
                       input=commit_message(experiment, row, parent, config)).strip()
        commits.append(head)
    return base, commits


def write_branch(git: Git, ledger: Ledger, tag: str, config: Config, name: str) -> list[str]:
    """Create branch `name` holding the kept chain on the base commit; refuses an existing branch."""
    try:
        git.run("check-ref-format", "--branch", name)
    except GitError:
        raise ExportError(f"{name!r} is not a valid branch name") from None
    if git.resolve(f"refs/heads/{name}"):
        raise ExportError(f"branch {name} already exists; export never overwrites a branch: choose another name")
    _, commits = replay(git, ledger, tag, config)
    git.update_ref(f"refs/heads/{name}", commits[-1], "0" * 40)  # create only
    return commits


def write_patches(git: Git, ledger: Ledger, tag: str, config: Config, directory: Path) -> list[Path]:
    """The kept chain as `git format-patch` files in `directory` (apply with `git am` on the base commit)."""
    base, commits = replay(git, ledger, tag, config)
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    out = git.run("format-patch", "-o", str(directory), f"{base}..{commits[-1]}")
    return [Path(line.strip()) for line in out.splitlines() if line.strip()]
