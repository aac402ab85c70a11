"""Side-by-side re-runs of two commits: does a gain hold on the test split, at a larger scale, or for
a longer budget?

The baseline and the candidate run with the same seeds, interleaved (baseline seed 0, candidate
seed 0, baseline seed 1, ...; at once on the session's free slots) so that a machine slowing down
or speeding up hits both alike, and the effect is estimated from the per-seed differences
(paired), with a Student-t interval. A
scaled comparison first makes a commit of each side with the scaled constants (e.g. `depth=+2`
adds 2 to DEPTH, every device's value of it when it is a per-device preset), off the research
branch, under refs/autoresearch/<tag>/verify/.

Used by `autoresearch verify`, by the held-out test at the end of a session, and to confirm an
implausible jump before it is kept. Every run and the summary go to the ledger.
"""

from __future__ import annotations

import math
import statistics
from typing import Optional

from scipy.special import stdtrit  # the Student t quantile: scipy.stats would cost seconds to import

from . import knobs, scope
from .budget import Budget
from .executor import Slot
from .gitrepo import Git
from .records import RunState
from .scale import Scale, ScaleError

class VerifyError(ValueError):
    pass


def scaled_commit(worktree: Git, commit: str, scales: list[Scale], editable: list[str]) -> str:
    """A commit on top of `commit` with each scaled constant changed in the editable file that defines it."""
    worktree.reset_to(commit)
    files = [p for p in worktree.run("ls-files", "-z").split("\0") if p.endswith(".py") and scope.matches(p, editable)]
    for scale in scales:
        for path in files:
            source = (worktree.root / path).read_text()
            try:
                value = knobs.read(source, scale.name)
            except (knobs.KnobError, SyntaxError):
                continue
            (worktree.root / path).write_text(knobs.set_value(source, scale.name, scale.apply(value)))
            break
        else:
            raise ScaleError(f"no editable file defines a constant {scale.name} (looked in {', '.join(files)})")
    return worktree.commit_all("autoresearch verify: " + ", ".join(map(str, scales)))


def paired_effect(baseline: list[Optional[float]], candidate: list[Optional[float]], minimize: bool,
                  level: float = 0.95) -> dict:
    """Mean improvement over the seeds where both sides succeeded, with its interval and a verdict."""
    pairs = [(b, c) for b, c in zip(baseline, candidate) if b is not None and c is not None
             and math.isfinite(b) and math.isfinite(c)]
    diffs = [(b - c) if minimize else (c - b) for b, c in pairs]
    if not diffs:
        return {"pairs": 0, "effect": None, "ci": None, "verdict": "no pair of successful runs"}
    effect = statistics.fmean(diffs)
    if len(diffs) < 2:
        return {"pairs": 1, "effect": effect, "ci": None, "verdict": "one pair: no interval"}
    half = stdtrit(len(diffs) - 1, 0.5 + level / 2) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    low, high = effect - half, effect + half
    verdict = "holds" if low > 0 else "reverses" if high < 0 else "inconclusive"
    return {"pairs": len(diffs), "effect": effect, "ci": [low, high], "verdict": verdict}


def compare(session, worktree: Git, slot: Slot, baseline_commit: str, candidate_commit: str, *,
            seeds: list[int], split: str, kind: str, budget: Optional[Budget] = None,
            scales: Optional[list[Scale]] = None) -> dict:
    """Run both commits with `seeds`, interleaved, evaluated on `split`; record and return the summary.

    `session` is the open session (session.py, which calls this module: so it is not imported here): its runs,
    ledger, refs and lines."""
    config = session.target.config
    budget = budget or session.budget
    scales = scales or []
    commits = {"baseline": baseline_commit, "candidate": candidate_commit}
    if scales:
        commits = {role: scaled_commit(worktree, commit, scales, config.files.editable)
                   for role, commit in commits.items()}
    settings = {"seeds": seeds, "split": split, "budget": str(budget), "scale": [str(s) for s in scales],
                "baseline_source": baseline_commit, "candidate_source": candidate_commit}
    ledger = session.ledger
    verification = ledger.start_verification(session.tag, kind, settings, commits["baseline"], commits["candidate"])
    for role, commit in commits.items():
        session.update_ref(f"refs/autoresearch/{session.tag}/verify/{verification}/{role}", commit)
    session.say(f"verify #{verification} ({kind}): baseline {commits['baseline'][:9]} vs candidate "
                f"{commits['candidate'][:9]}, {split} split, {budget}, seeds {seeds}"
                + (f", scaled {', '.join(map(str, scales))}" if scales else ""))
    def job(role: str, commit: str, seed: int):
        def run_and_record(worktree: Git, slot: Slot):
            run = session.run_once(worktree, slot, commit, seed, budget=budget, split=split,
                                   directory=session.target.runs / session.tag / "verify" / f"{verification:04d}"
                                   / f"{role}-seed{seed}")
            ledger.add_verification_run(verification, role, commit, split, run)
            shown = f"{run.metric:.6f}" if run.metric is not None else run.state.value
            session.say(f"  {role:<9} seed {seed}: {config.metric.name} {shown}"
                        + (f"  [{run.reason}]" if run.state is not RunState.OK else ""))
            return run
        return run_and_record

    pairs = [(role, commit, seed) for seed in seeds for role, commit in commits.items()]
    runs = session.slots.map([job(*pair) for pair in pairs], held=(worktree, slot))  # at once, on the free slots
    metrics: dict[str, list[Optional[float]]] = {"baseline": [], "candidate": []}
    for (role, _, _), run in zip(pairs, runs):
        metrics[role].append(run.metric if run.state is RunState.OK else None)
    summary = {
        role: _describe(values) for role, values in metrics.items()
    }
    summary["effect"] = paired_effect(metrics["baseline"], metrics["candidate"], config.minimize)
    ledger.finish_verification(verification, summary)
    effect = summary["effect"]
    if effect["effect"] is not None:
        interval = f" [{effect['ci'][0]:+.4g}, {effect['ci'][1]:+.4g}]" if effect["ci"] else ""
        session.say(f"verify #{verification}: effect {effect['effect']:+.4g}{interval} over {effect['pairs']} "
                    f"paired seed{'s' * (effect['pairs'] != 1)}: {effect['verdict']}")
    else:
        session.say(f"verify #{verification}: {effect['verdict']}")
    summary["id"] = verification
    return summary


def _describe(values: list[Optional[float]]) -> dict:
    ok = [v for v in values if v is not None]
    return {"runs": len(values), "ok": len(ok), "mean": statistics.fmean(ok) if ok else None,
            "sd": statistics.stdev(ok) if len(ok) > 1 else None}
