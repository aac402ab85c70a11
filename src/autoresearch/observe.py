"""The one read model: a tag's research as every view shows it, read from the ledger's typed readers and the run
directories; nothing here writes.

`status` is the line read once: `autoresearch status` prints it (as text, status.py, or JSON), and the live
terminal view (live.py), the report (report.py) and the dashboard (serve.py) show `summary` (its figures at a
glance) and `rows` (each experiment with its seed statistics and its effect over its parent). `in_flight` says what
every slot is doing now, parsing progress from the tail of the running log (`step 120 | 35.0% | loss 2.1234 | ... |
15,000 tok/s`) and falling back to the clock for targets that print nothing. Whether a session is running has one
answer: a process holds the target's session lock (control.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from . import constraints, control, transfer
from .budget import Budget
from .config import Config
from .costs import Usage
from .ledger import Ledger
from .records import Experiment, RunState, State
from .target import Target

TAIL_BYTES = 16384

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_STEP = re.compile(r"\bstep[\s:=]+(\d[\d,]*)", re.IGNORECASE)
_LOSS = re.compile(r"\bloss[\s:=]+(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)
_TOKS = re.compile(r"([\d,]+(?:\.\d+)?)\s*([kM]?)\s*tok(?:ens)?/s", re.IGNORECASE)


def open_ledger(target: Target) -> Optional[Ledger]:
    """The target's ledger, or None before any research (a view never creates one)."""
    return Ledger(target.ledger_path) if target.ledger_path.exists() else None


# ---------------------------------------------------------------------------- a tag


def experiment_dict(e: Experiment) -> dict:
    return {
        "id": e.index, "state": e.state.value, "metric": e.metric, "commit": e.commit, "parent": e.parent,
        "description": e.description, "seconds": e.seconds, "agent": e.agent, "reason": e.reason,
        "lines_added": e.lines_added, "lines_removed": e.lines_removed, "knobs": e.knobs,
        "effect": e.effect, "effect_se": e.effect_se, "margin": e.margin, "analysis": e.analysis,
        "slot": e.slot, "proposed_on": e.proposed_on, "origin": e.origin,
        "runs": [{"seed": r.seed, "state": r.state.value, "metric": r.metric, "seconds": r.seconds,
                  "peak_memory_mb": r.peak_memory_mb, "reason": r.reason, "log": r.log_path, "slot": r.slot,
                  "started_at": r.started_at, "budget": r.budget} for r in e.runs],
    }


def status(ledger: Ledger, tag: str, target: Target, experiments: Optional[list[Experiment]] = None) -> dict:
    """Everything known about `tag`: its experiments, the kept chain, counts, the improvement, agent
    spend, flags, noise model, verifications (and the held-out figures they give), transfers, constraints,
    suggestions, sessions, slots."""
    config = target.config
    experiments = ledger.experiments(tag) if experiments is None else experiments
    chain = [e for e in experiments if e.state in (State.BASELINE, State.KEPT)]
    baseline = chain[0] if chain and chain[0].state is State.BASELINE else None
    best = chain[-1] if chain else None
    counts = Counter(e.state.value for e in experiments)
    costs = ledger.agent_costs(tag)
    verifications = _verifications(ledger.verifications(tag), experiments)
    held_out = _held_out(verifications)
    entries = []
    for e in experiments:
        entry = experiment_dict(e)
        entry["agent_cost"] = costs[e.index].as_dict() if e.index in costs else None
        entry["test"] = held_out.get(e.index)
        entries.append(entry)
    improvement = _improvement(baseline, best, config)
    row = ledger.tag(tag)
    return {
        "tag": tag, "branch": row["branch"], "base_commit": row["base_commit"], "target": config.target.name,
        "metric": {"name": config.metric.name, "goal": config.metric.goal},
        "best": experiment_dict(best) if best else None,
        "baseline": experiment_dict(baseline) if baseline else None,
        "improvement": improvement,
        "relative_improvement": improvement / abs(baseline.metric) if improvement is not None and baseline.metric
        else None,
        "counts": {state.value: counts.get(state.value, 0) for state in State
                   if state not in (State.BASELINE, State.PROPOSED)},
        "kept_chain": [e.index for e in chain],
        "seconds": sum(e.seconds or 0 for e in experiments),
        "experiments": entries,
        "sessions": ledger.sessions(tag),
        "session": session_state(ledger, tag, target.state),
        "rejections": [{"id": e.index, "description": e.description, "reason": e.reason}
                       for e in experiments if e.state is State.REJECTED],
        "flags": ledger.flags(tag),
        "noise": ledger.noise_history(tag),
        "verifications": verifications,
        "transfers": transfers(ledger, tag, config.minimize),
        "agent_cost": _spend(costs.values()),
        "constraints": [{**c.model_dump(), "baseline": constraints.reference(baseline, c.metric),
                         "text": constraints.describe(c, constraints.reference(baseline, c.metric))}
                        for c in config.constraints],
        "suggestions": ledger.suggestions(tag),
        "slots": ledger.slot_activity(tag),
    }


def summary(status: dict) -> dict:
    """The line at a glance (the dashboard's header, the live panel, the report's cards): `status` less the
    experiments, with the latest noise model, the agent's total spend and the latest transfer table."""
    def brief(e: Optional[dict]) -> Optional[dict]:
        return {key: e[key] for key in ("id", "metric", "commit", "description")} if e else None

    spend = status["agent_cost"]
    cost = None
    if spend["proposals"]:
        cost = {key: spend[key] for key in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")}
        if spend["cost_usd"] is not None:
            cost["usd"] = spend["cost_usd"]
    noise = status["noise"][-1] if status["noise"] else None
    return {
        **{key: status[key] for key in ("tag", "branch", "base_commit", "target", "metric", "improvement",
                                      "relative_improvement", "counts", "kept_chain", "seconds", "session",
                                      "suggestions")},
        "baseline": brief(status["baseline"]), "best": brief(status["best"]), "experiments": len(status["experiments"]),
        "cost": cost, "flags": len(status["flags"]),
        "noise": {key: value for key, value in noise.items() if key not in ("id", "created_at") and value is not None}
        if noise else None,
        "constraints": [c["text"] for c in status["constraints"]],
        "transfer": status["transfers"][-1] if status["transfers"] else None,
    }


def seed_stats(experiment: Experiment) -> tuple[Optional[float], Optional[float], int]:
    """Mean, standard deviation (None below 2 seeds) and count of the finished runs' metrics at the budget it was
    judged at (a best re-baselined at another budget has runs there too: another scale)."""
    values = [r.metric for r in experiment.runs if r.state is RunState.OK and r.metric is not None
              and math.isfinite(r.metric) and r.budget == experiment.budget]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def rows(experiments: list[Experiment], config: Config, status: Optional[dict] = None, diffs: bool = False) -> list[dict]:
    """Every experiment as a dict for views: status's fields, seed statistics and the effect over its parent, and
    (given the line's `status`) its agent cost, flags and held-out figures.

    `effect` is positive when the experiment is better than its parent (whatever the metric's goal);
    `effect_se` is its standard error where both have several seeds."""
    chain = {e.commit: e for e in experiments if e.state in (State.BASELINE, State.KEPT) and e.commit}
    entries = {entry["id"]: entry for entry in (status or {}).get("experiments", [])}
    flags = (status or {}).get("flags", [])
    out = []
    for e in experiments:
        row = experiment_dict(e)
        mean, sd, n = seed_stats(e)
        parent = chain.get(e.parent) if e.parent else None
        effect, effect_se = e.effect, e.effect_se  # the judge's, where recorded
        if parent is not None and e.ok and parent.ok:
            if effect is None:
                effect = (parent.metric - e.metric) if config.minimize else (e.metric - parent.metric)
            _, parent_sd, parent_n = seed_stats(parent)
            if effect_se is None and sd is not None and parent_sd is not None:
                effect_se = math.sqrt(sd ** 2 / n + parent_sd ** 2 / parent_n)
        entry = entries.get(e.index, {})
        row.update(sd=sd, seeds=n, parent_id=parent.index if parent else None, effect=effect, effect_se=effect_se,
                   created_at=e.created_at, finished_at=e.finished_at, cost=entry.get("agent_cost"),
                   flags=[f for f in flags if f["index"] == e.index], test=entry.get("test"))
        if diffs:
            row["diff"] = e.diff
        out.append(row)
    return out


def _improvement(baseline: Optional[Experiment], best: Optional[Experiment], config: Config) -> Optional[float]:
    if not (baseline and best and baseline.ok and best.ok):
        return None
    return baseline.metric - best.metric if config.minimize else best.metric - baseline.metric


def _spend(usages) -> dict:
    """What the agent's proposals cost in all: tokens, dollars (None when any price was unknown)."""
    usages = list(usages)
    total = sum(usages, Usage(cost_usd=0.0))
    models = sorted({u.model for u in usages if u.model})
    return {**total.as_dict(), "model": ", ".join(models), "proposals": len(usages),
            "cost_per_proposal_usd": total.cost_usd / len(usages) if usages and total.cost_usd is not None else None,
            "unpriced_proposals": sum(1 for u in usages if u.cost_usd is None)}


def _verifications(verifications: list[dict], experiments: list[Experiment]) -> list[dict]:
    """The ledger's verifications, each with `sides`: per role, the experiment it re-ran (its index, where the
    commit is one) and the mean ± sd of its successful runs."""
    by_commit: dict[str, int] = {}
    for e in experiments:
        if e.commit and (e.commit not in by_commit or e.state in (State.BASELINE, State.KEPT)):
            by_commit[e.commit] = e.index
    out = []
    for v in verifications:
        sides = {}
        for role in ("baseline", "candidate"):
            source = v["settings"].get(f"{role}_source") or v[f"{role}_commit"]
            values = [r["metric"] for r in v["runs"] if r["role"] == role and r["state"] == RunState.OK.value
                      and r["metric"] is not None]
            sides[role] = {"id": by_commit.get(source), "mean": statistics.fmean(values) if values else None,
                           "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
        out.append({**v, "sides": sides})
    return out


def _held_out(verifications: list[dict]) -> dict[int, dict]:
    """Test-split figures per experiment index: the latest unscaled verification on the test split that re-ran it."""
    found: dict[int, dict] = {}
    for v in verifications:
        if v["settings"].get("split") == "test" and not v["settings"].get("scale"):
            for side in v["sides"].values():
                if side["id"] is not None and side["n"]:
                    found[side["id"]] = {key: side[key] for key in ("mean", "sd", "n")}
    return found


def transfers(ledger: Ledger, tag: str, minimize: bool) -> list[dict]:
    """Every transfer of the line, oldest first, as its table (transfer.table): the one recorded when it finished,
    else the table of the runs so far (a transfer running now, or one that was stopped), which says "finished":
    false."""
    return [{**(record["summary"] or transfer.table(record, minimize)), "session_id": record["session_id"],
             "created_at": record["created_at"], "finished_at": record["finished_at"]}
            for record in ledger.transfers(tag)]


# ---------------------------------------------------------------------------- sessions and slots


def session_state(ledger: Ledger, tag: str, state_dir: Path) -> Optional[dict]:
    """The latest session of the line: whether it is alive (its process holds the target's session lock), and the
    control file's last command."""
    sessions = ledger.sessions(tag)
    if not sessions:
        return None
    session = dict(sessions[-1])
    session["alive"] = session["ended_at"] is None and control.holder(state_dir) == session["pid"]
    session["control"] = control.read(state_dir)["command"] if session["alive"] else None
    return session


def tail(path: Path, max_bytes: int = TAIL_BYTES) -> str:
    """The last `max_bytes` of a log file ('' if it is not there)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def parse_progress(text: str) -> dict:
    """From a log's tail, the last progress line's fraction, step, loss and tokens/s (whatever it has)."""
    for line in reversed(text.splitlines()):
        if line.startswith("==> "):
            break  # a new command began (evaluation): its output is not training progress
        percent, step = _PERCENT.search(line), _STEP.search(line)
        if not (percent or step):
            continue
        found: dict = {"line": line.strip()}
        if percent:
            found["fraction"] = min(1.0, float(percent.group(1)) / 100)
        if step:
            found["step"] = int(step.group(1).replace(",", ""))
        if (loss := _LOSS.search(line)):
            found["loss"] = float(loss.group(1))
        if (toks := _TOKS.search(line)):
            found["tokens_per_second"] = float(toks.group(1).replace(",", "")) * {"": 1, "k": 1e3, "K": 1e3,
                                                                                   "M": 1e6}[toks.group(2)]
        return found
    return {}


def in_flight(target: Target, ledger: Ledger, tag: str, experiments: Optional[list[Experiment]] = None,
              now: Optional[float] = None) -> list[dict]:
    """Per slot: the experiment it is running (with its progress), or idle."""
    now = time.time() if now is None else now
    config = target.config
    experiments = ledger.experiments(tag) if experiments is None else experiments
    running = [e for e in experiments if e.state is State.RUNNING]
    session = session_state(ledger, tag, target.state)
    budget = _budget(session["budget"] if session else None) or config.default_budget()
    slots = sorted(p.name for p in target.worktrees.iterdir() if p.is_dir()) if target.worktrees.is_dir() else []
    out = []
    for e in running:
        slot = e.slot or (slots[0] if len(slots) == 1 and len(running) == 1 else None)
        out.append(_running(target, tag, e, budget, now, slot, bool(session and session["alive"])))
    busy = {entry["slot"] for entry in out}
    out += [{"slot": name, "busy": False} for name in slots if name not in busy]
    return out


def _budget(spec: Optional[str]) -> Optional[Budget]:
    try:
        return Budget.parse(spec) if spec else None
    except ValueError:
        return None


def _running(target: Target, tag: str, e: Experiment, budget: Budget, now: float, slot: Optional[str],
             alive: bool) -> dict:
    config = target.config
    done = {r.seed for r in e.runs}
    directory = run_dir(target, tag, e.index)
    started_dirs = sorted(directory.glob("seed*"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    seeds = [int(p.name[4:]) for p in started_dirs if p.name[4:].isdigit()]
    seed = next((s for s in reversed(seeds) if s not in done),
                next((s for s in config.run.seeds if s not in done), config.run.seeds[-1]))
    ended = [r.started_at + r.seconds for r in e.runs if r.started_at is not None]
    started = max([e.created_at, *ended])  # the run in flight began when the last one ended
    log = run_dir(target, tag, e.index) / f"seed{seed}" / "log.txt"
    text = tail(log)
    headers = [line for line in text.splitlines() if line.startswith("==> ")]
    evaluating = bool(headers and config.commands.evaluate and headers[-1][4:].strip() == config.commands.evaluate)
    progress = {} if evaluating else parse_progress(text)
    elapsed = max(0.0, now - started)
    if "fraction" in progress:
        progress["source"] = "log"
    elif budget.kind == "seconds":
        progress.update(fraction=min(1.0, elapsed / budget.value), source="clock")
    elif config.budget.timeout:
        progress.update(fraction=min(1.0, elapsed / config.budget.timeout), source="clock")
    return {"slot": slot, "busy": True, "id": e.index, "description": e.description, "agent": e.agent,
            "seed": seed, "run": len(done) + 1,
            "phase": "evaluate" if evaluating else "train", "started_at": started, "elapsed": elapsed,
            "budget": str(budget), "progress": progress, "log": str(log), "stale": not alive}


def run_dir(target: Target, tag: str, index: int) -> Path:
    return target.runs / tag / f"{index:05d}"


def log_tail(target: Target, tag: str, e: Experiment, lines: int = 50) -> dict:
    """The last lines of an experiment's log: the file of its latest seed while it runs or where it
    still exists, else the tail the ledger kept."""
    directory = run_dir(target, tag, e.index)
    logs = sorted(directory.glob("seed*/log.txt"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    if logs:
        text, source = tail(logs[-1], max(TAIL_BYTES, lines * 200)), str(logs[-1])
    elif e.runs:
        text, source = e.runs[-1].log_tail, "ledger"
    else:
        text, source = "", None
    kept = text.splitlines()[-lines:] if lines > 0 else []
    return {"id": e.index, "state": e.state.value, "running": e.state is State.RUNNING, "source": source,
            "lines": kept}


def dumps(data) -> str:
    """JSON for the views: NaN and infinities as null."""
    return json.dumps(_finite(data))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
