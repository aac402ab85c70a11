"""`autoresearch status`: a research line at a glance, as text or JSON, read from the ledger."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from .config import Config
from .ledger import Ledger
from .records import Experiment, State


def experiment_dict(e: Experiment) -> dict:
    return {
        "id": e.index, "state": e.state.value, "metric": e.metric, "commit": e.commit, "parent": e.parent,
        "description": e.description, "seconds": e.seconds, "agent": e.agent, "reason": e.reason,
        "lines_added": e.lines_added, "lines_removed": e.lines_removed, "knobs": e.knobs,
        "runs": [{"seed": r.seed, "state": r.state.value, "metric": r.metric, "seconds": r.seconds,
                  "peak_memory_mb": r.peak_memory_mb, "reason": r.reason, "log": r.log_path} for r in e.runs],
    }


def status_dict(ledger: Ledger, tag: str, config: Config) -> dict:
    experiments = ledger.experiments(tag)
    best, baseline = ledger.best(tag), ledger.baseline(tag)
    counts = Counter(e.state.value for e in experiments if e.state is not State.BASELINE)
    return {
        "tag": tag,
        "branch": ledger.tag(tag)["branch"],
        "metric": {"name": config.metric.name, "goal": config.metric.goal},
        "best": experiment_dict(best) if best else None,
        "baseline": experiment_dict(baseline) if baseline else None,
        "improvement": _improvement(baseline, best, config),
        "counts": {state.value: counts.get(state.value, 0) for state in State
                   if state not in (State.BASELINE, State.PROPOSED)},
        "kept_chain": [e.index for e in experiments if e.state in (State.BASELINE, State.KEPT)],
        "experiments": [experiment_dict(e) for e in experiments],
        "sessions": ledger.sessions(tag),
        "rejections": [{"id": e.index, "description": e.description, "reason": e.reason}
                       for e in experiments if e.state is State.REJECTED],
        "flags": ledger.flags(tag),
    }


def _improvement(baseline: Optional[Experiment], best: Optional[Experiment], config: Config) -> Optional[float]:
    if not (baseline and best and baseline.ok and best.ok):
        return None
    return baseline.metric - best.metric if config.minimize else best.metric - baseline.metric


def render(status: dict) -> str:
    """The status as plain text for a terminal."""
    name = status["metric"]["name"]
    lines = [f"research line {status['tag']} (branch {status['branch']}), {name} ({status['metric']['goal']})"]
    baseline, best = status["baseline"], status["best"]
    if baseline is None:
        lines.append("no baseline yet: `autoresearch run` starts with it")
        return "\n".join(lines)
    lines.append(f"baseline  {name} {baseline['metric']:.6f}  at {baseline['commit'][:9]}")
    gain = status["improvement"]
    lines.append(f"best      {name} {best['metric']:.6f}  at {best['commit'][:9]}"
                 + (f"  ({gain:+.6f} better than baseline)" if gain else ""))
    counts = status["counts"]
    lines.append("experiments: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n) if any(
        counts.values()) else "experiments: none yet")
    lines.append("")
    lines.append("kept chain:")
    by_id = {e["id"]: e for e in status["experiments"]}
    for index in status["kept_chain"]:
        e = by_id[index]
        lines.append(f"  #{index:<4} {e['metric']:.6f}  {(e['commit'] or '')[:9]}  {e['description']}")
    audit = [(f["index"], f"{f['kind']}" + (f" seed {f['seed']}" if f["seed"] is not None else ""), f["message"])
             for f in status["flags"]]
    flagged = {index for index, _, _ in audit}
    audit += [(r["id"], "rejected", r["reason"]) for r in status["rejections"] if r["id"] not in flagged]
    if audit:
        lines.append("")
        lines.append(f"rejections and flags ({len(audit)}):")
        for index, kind, message in sorted(audit, key=lambda item: item[0])[-20:]:
            lines.append(f"  #{index:<4} {kind:<11} {message}")
    recent = [e for e in status["experiments"] if e["state"] not in ("baseline",)][-10:]
    if recent:
        lines.append("")
        lines.append("latest experiments:")
        for e in recent:
            metric = f"{e['metric']:.6f}" if e["metric"] is not None else "-".ljust(8)
            why = f"  [{e['reason']}]" if e["state"] not in ("kept", "discarded") else ""
            lines.append(f"  #{e['id']:<4} {e['state']:<11} {metric}  {e['description']}{why}")
    return "\n".join(lines)
