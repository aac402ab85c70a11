"""Transfer: which kept changes of a research line still help at a larger scale?

`[transfer]` in autoresearch.toml names the larger scale (constants changed as `verify --scale` changes them, e.g.
`depth=+2`, and a longer budget). At the end of a session (`at_end`), or with `autoresearch transfer`, these run on
the held-out test split, at the session's scale ("small") and at the larger one ("large"), all with the same seeds,
seed by seed so that a machine slowing down hits every variant alike:

- the baseline and the best (the whole chain's gain);
- per kept change, the best without that change: its own diff reverted on the best (a leave-one-out ablation).
  A change whose lines a later kept change rewrote cannot be taken out alone; its row says so.

A change's effect at a scale is the best's gain over the chain without it, paired over the seeds with a Student-t
interval (verify.paired_effect). The verdict reads the larger scale's interval:

- transfers: it lies above zero (the change still helps there);
- does not: it lies at or below zero (no gain left there);
- unclear: it straddles zero, or too few runs succeeded for an interval.

`[transfer] runs` caps what it spends: the most seeds (up to `seeds`, at least 2) for which the baseline, the best
and every ablation fit at both scales; when even 2 seeds do not fit, the ablations of the changes with the smallest
recorded gains are left out ("not measured"). The plan, every run and the table go to the ledger (transfers,
transfer_runs); the commits stay reachable under refs/autoresearch/<tag>/transfer/<id>/.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .budget import Budget
from .config import TransferSection
from .records import Experiment, RunState, State
from .scale import Scale, ScaleError
from .verify import paired_effect, scaled_commit

if TYPE_CHECKING:
    from .gitrepo import Git
    from .session import Session

SCALES = ("small", "large")
SPLIT = "test"
FIRST_LARGE_MARGIN = 10.0  # the first larger run may take this many times a small run (times the budget ratio) + 300 s


class TransferError(Exception):
    """The transfer cannot be run as configured; the message says why."""


@dataclass(frozen=True)
class Variant:
    name: str  # "baseline", "best", "without #3"
    commit: str  # at the session's scale
    large: str = ""  # the same code at the larger scale


def variant_name(index: int) -> str:
    return f"without #{index}"


# ---------------------------------------------------------------------------- the plan


def without(worktree: "Git", best: str, change: Experiment) -> tuple[Optional[str], str]:
    """The best with `change`'s own diff reverted, as a commit: (commit, "") or (None, why it cannot be made)."""
    worktree.reset_to(best)
    conflict = worktree.apply_patch(worktree.patch(change.commit, change.parent))
    if conflict:  # a neighbouring line changed since: where the lines it wrote still are, without context
        worktree.reset_to(best)
        if worktree.apply_patch(worktree.patch(change.commit, change.parent, context=0), zero_context=True):
            worktree.reset_to(best)
            return None, "cannot be taken out alone: a later kept change rewrote the lines it changed"
    if not worktree.stage_changes():
        return None, "its change is no longer in the best"
    return worktree.commit_all(f"autoresearch transfer: the best without #{change.index}\n\n"
                               f"reverts: {' '.join(change.description.split())}"), ""


def fit(ablations: int, settings: TransferSection) -> tuple[int, int]:
    """(seeds, ablations kept): the most ablations first, then the most seeds, within `settings.runs`."""
    for kept in range(ablations, -1, -1):
        seeds = min(settings.seeds, settings.runs // (len(SCALES) * (2 + kept)))
        if seeds >= 2:
            return seeds, kept
    raise TransferError(f"[transfer] runs = {settings.runs} is too few for the baseline and the best at two seeds "
                        "and two scales (8 runs)")  # the config's own bound keeps this from happening


def _tree(git: "Git", commit: str) -> str:
    return git.run("rev-parse", f"{commit}^{{tree}}").strip()


# ---------------------------------------------------------------------------- running it


def at_end(session: "Session") -> Optional[dict]:
    """[transfer] with at_end, when a session ends: a problem is said, not raised (the research is recorded whatever
    becomes of its transfer)."""
    settings = session.target.config.transfer
    if settings is None or not settings.at_end:
        return None
    try:
        return run(session, settings)
    except TransferError as exc:
        session.say(f"transfer: {exc}")
        return None


def run(session: "Session", settings: Optional[TransferSection] = None) -> Optional[dict]:
    """Plan, run and record the transfer of the session's research line; its table, or None when nothing was kept."""
    config = session.target.config
    settings = settings or config.transfer
    if settings is None:
        raise TransferError("no [transfer] table in autoresearch.toml: add one (see docs/transfer.md), e.g.\n"
                            '[transfer]\nscale = ["depth=+2"]\nbudget = "600steps"\nruns = 24')
    if not config.commands.evaluate:
        raise TransferError("the transfer scores on the test split, which needs an evaluate command in [commands]")
    ledger, tag = session.ledger, session.tag
    best, baseline = ledger.best(tag), ledger.baseline(tag)
    kept = [e for e in ledger.experiments(tag) if e.state is State.KEPT and e.commit]
    if best is None or baseline is None or best.id == baseline.id or not kept:
        session.say("transfer: no kept change yet, nothing to transfer")
        return None
    try:
        scales = [Scale.parse(text) for text in settings.scale]
    except ScaleError as exc:
        raise TransferError(f"[transfer] scale: {exc}") from None
    small = _measured_at(session, best)
    budgets = {"small": small, "large": Budget.parse(settings.budget) if settings.budget else small}

    with session.slots.take() as (worktree, slot):
        return _run(session, settings, worktree, slot, scales, budgets, best, baseline, kept)


def _run(session: "Session", settings: TransferSection, worktree: "Git", slot, scales: list, budgets: dict,
         best: Experiment, baseline: Experiment, kept: list[Experiment]) -> dict:
    config, ledger, tag = session.target.config, session.ledger, session.tag
    variants = [Variant("baseline", baseline.commit), Variant("best", best.commit)]
    trees = {_tree(worktree, baseline.commit): "baseline"}
    changes, candidates = [], []
    for change in kept:
        entry = {"index": change.index, "description": change.description, "effect": change.effect,
                 "effect_se": change.effect_se, "commit": change.commit, "variant": None, "reason": ""}
        changes.append(entry)
        commit, why = without(worktree, best.commit, change)
        if commit is None:
            entry["reason"] = why
        elif _tree(worktree, commit) in trees:  # the chain's only change: without it is the baseline
            entry["variant"] = trees[_tree(worktree, commit)]
        else:
            candidates.append((change.effect or 0.0, entry, commit))
    candidates.sort(key=lambda item: -item[0])  # the largest recorded gains first, should the budget not fit all
    seeds, fitted = fit(len(candidates), settings)
    for position, (_, entry, commit) in enumerate(candidates):
        if position < fitted:
            entry["variant"] = variant_name(entry["index"])
            variants.append(Variant(entry["variant"], commit))
        else:
            entry["reason"] = f"not measured: over the budget of {settings.runs} runs ([transfer] runs)"
    try:
        variants = [Variant(v.name, v.commit, scaled_commit(worktree, v.commit, scales, config.files.editable))
                    for v in variants]
    except ScaleError as exc:
        raise TransferError(f"[transfer] scale: {exc}") from None

    plan = {"scale": [str(s) for s in scales], "budgets": {k: str(v) for k, v in budgets.items()}, "split": SPLIT,
            "seeds": list(range(seeds)), "runs": settings.runs, "planned": seeds * len(SCALES) * len(variants),
            "baseline": {"index": baseline.index, "commit": baseline.commit},
            "best": {"index": best.index, "commit": best.commit},
            "variants": [{"name": v.name, "commit": v.commit, "large": v.large} for v in variants],
            "changes": changes}
    transfer_id = ledger.start_transfer(tag, session.session_id, plan)
    for v in variants:
        slug = v.name.replace(" #", "-")
        session.update_ref(f"refs/autoresearch/{tag}/transfer/{transfer_id}/{slug}", v.commit)
        session.update_ref(f"refs/autoresearch/{tag}/transfer/{transfer_id}/{slug}-large", v.large)
    session.say(f"transfer #{transfer_id}: {len(variants)} variants (baseline, best, {len(variants) - 2} without one "
                f"kept change) on the {SPLIT} split at {budgets['small']} and at {', '.join(plan['scale'])} "
                f"{budgets['large']}, seeds {plan['seeds']}: {plan['planned']} runs of at most {settings.runs}")
    seconds: dict[str, list[float]] = {"small": [], "large": []}
    for seed in plan["seeds"]:
        for scale in SCALES:
            for v in variants:
                directory = (session.target.runs / tag / "transfer" / f"{transfer_id:04d}"
                             / f"{scale}-{v.name.replace(' #', '-')}-seed{seed}")
                timeout = _timeout(session, settings, scale, budgets, seconds)
                commit = v.commit if scale == "small" else v.large
                record = session.run_once(worktree, slot, commit, seed, budget=budgets[scale], split=SPLIT,
                                          directory=directory, timeout=timeout)
                ledger.add_transfer_run(transfer_id, scale, v.name, commit, SPLIT, str(budgets[scale]), record)
                if record.state is RunState.OK:
                    seconds[scale].append(record.seconds)
                shown = f"{record.metric:.6f}" if record.metric is not None else f"{record.state.value} ({record.reason})"
                session.say(f"  {scale:<5} {v.name:<12} seed {seed}: {config.metric.name} {shown}")
    summary = table(_record(ledger, tag, transfer_id), config.minimize)
    ledger.finish_transfer(transfer_id, summary)
    session.say(render(summary, config.metric.name))
    return summary


def _measured_at(session: "Session", best: Experiment) -> Budget:
    """The budget the best was judged at: its session's (`autoresearch transfer` runs in a session of its own)."""
    for entry in session.ledger.sessions(session.tag):
        if entry["id"] == best.session_id:
            try:
                return Budget.parse(entry["budget"])
            except ValueError:
                break
    return session.budget


def _record(ledger, tag: str, transfer_id: int) -> dict:
    return next(t for t in ledger.transfers(tag) if t["id"] == transfer_id)


def _timeout(session: "Session", settings: TransferSection, scale: str, budgets: dict, seconds: dict) -> Optional[float]:
    """The hard limit of one run: the session's at the small scale; at the larger one, a seconds budget's own rule,
    else [transfer] timeout, [budget] timeout, or what the runs so far say (a larger model's time is unknown
    before its first run)."""
    if scale == "small" or budgets["large"].kind == "seconds":
        return None
    configured = settings.timeout or session.target.config.budget.timeout
    if configured:
        return configured
    if seconds["large"]:
        return 3 * max(seconds["large"]) + 60
    small, large = budgets["small"], budgets["large"]
    ratio = large.value / small.value if large.kind == small.kind else 1.0
    per_run = max(seconds["small"]) if seconds["small"] else 60.0
    return FIRST_LARGE_MARGIN * per_run * ratio + 300


# ---------------------------------------------------------------------------- the table


def verdict(large: dict) -> str:
    if not large.get("ci"):
        return "unclear"
    low, high = large["ci"]
    return "transfers" if low > 0 else "does not" if high <= 0 else "unclear"


def table(record: dict, minimize: bool) -> dict:
    """The transfer table from a recorded transfer (finished or not): the whole chain's row, then one per kept change,
    each with its effect at both scales (gain of the best, positive is better, with a 95% interval) and a verdict."""
    plan = record["settings"]
    seeds = plan["seeds"]
    metric: dict[tuple[str, str], dict[int, Optional[float]]] = {}
    for r in record["runs"]:
        ok = r["state"] == RunState.OK.value and r["metric"] is not None and math.isfinite(r["metric"])
        metric.setdefault((r["scale"], r["variant"]), {})[r["seed"]] = r["metric"] if ok else None

    def gain(scale: str, without_it: str) -> dict:
        values = metric.get((scale, without_it), {}), metric.get((scale, "best"), {})
        return paired_effect([values[0].get(s) for s in seeds], [values[1].get(s) for s in seeds], minimize)

    def row(label: str, index: Optional[int], description: str, versus: Optional[str], reason: str = "") -> dict:
        if versus is None:
            return {"label": label, "index": index, "description": description, "small": None, "large": None,
                    "verdict": "not measured", "reason": reason}
        small, large = gain("small", versus), gain("large", versus)
        return {"label": label, "index": index, "description": description, "versus": versus, "small": small,
                "large": large, "verdict": verdict(large), "reason": reason}

    rows = [row(f"whole chain (#{plan['baseline']['index']} -> #{plan['best']['index']})", None,
                "the best against the baseline", "baseline")]
    rows += [row(f"#{c['index']}", c["index"], c["description"], c["variant"], c["reason"]) for c in plan["changes"]]
    means = {}
    for (scale, name), by_seed in metric.items():
        values = [v for v in by_seed.values() if v is not None]
        means.setdefault(scale, {})[name] = {"mean": statistics.fmean(values) if values else None,
                                             "sd": statistics.stdev(values) if len(values) > 1 else None,
                                             "n": len(values)}
    return {"id": record["id"], "scale": plan["scale"], "budgets": plan["budgets"], "split": plan["split"],
            "seeds": seeds, "runs": len(record["runs"]), "planned": plan["planned"], "cap": plan["runs"],
            "finished": record.get("finished_at") is not None or len(record["runs"]) >= plan["planned"],
            "rows": rows, "means": means}


def _shown(effect: Optional[dict]) -> str:
    if not effect or effect.get("effect") is None:
        return "-"
    interval = f" [{effect['ci'][0]:+.4f}, {effect['ci'][1]:+.4f}]" if effect.get("ci") else ""
    return f"{effect['effect']:+.4f}{interval}"


def render(summary: dict, metric_name: str) -> str:
    """The transfer table as text (status, the session's end, `autoresearch transfer`)."""
    budgets = summary["budgets"]
    lines = [f"transfer #{summary['id']} ({metric_name} gain of the best, {summary['split']} split, paired seeds "
             f"{summary['seeds']}, 95% intervals; {summary['runs']} of {summary['planned']} runs"
             + ("" if summary["finished"] else ", unfinished") + "):",
             f"  {'change':<34} {'small: ' + budgets['small']:<28} "
             f"{'large: ' + ', '.join(summary['scale']) + ' ' + budgets['large']:<28} verdict"]
    for r in summary["rows"]:
        label = f"{r['label']} {r['description'] if r['index'] is not None else ''}".strip()
        if r["small"] is None:
            lines.append(f"  {label[:34]:<34} {r['reason']}")
        else:
            lines.append(f"  {label[:34]:<34} {_shown(r['small']):<28} {_shown(r['large']):<28} {r['verdict']}")
    return "\n".join(lines)
