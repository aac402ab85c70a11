"""What the views show, read from the ledger and the run directories; nothing here writes.

The live terminal view (live.py), the report (report.py) and the dashboard (serve.py) all read
through here. Each experiment becomes a plain dict (status.py's, plus seed statistics and its
effect over its parent); `in_flight` says what every slot is doing now, parsing progress from the
tail of the running log (`step 120 | 35.0% | loss 2.1234 | ... | 15,000 tok/s`) and falling back to
the clock for targets that print nothing. Later ledger versions may add a `flags` table, agent
cost columns, a noise model or test-split runs: each is shown where present and skipped where not.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Optional

from . import constraints, control
from .budget import Budget
from .config import Config
from .ledger import Ledger
from .records import Experiment, RunState, State
from .status import experiment_dict
from .target import Target

COST_COLUMNS = ("cost_usd", "agent_cost_usd", "usd", "dollars", "cost")
TOKEN_COLUMNS = ("tokens_in", "tokens_out", "input_tokens", "output_tokens", "cached_tokens", "cache_read_tokens")
TAIL_BYTES = 16384

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")
_STEP = re.compile(r"\bstep[\s:=]+(\d[\d,]*)", re.IGNORECASE)
_LOSS = re.compile(r"\bloss[\s:=]+(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)
_TOKS = re.compile(r"([\d,]+(?:\.\d+)?)\s*([kM]?)\s*tok(?:ens)?/s", re.IGNORECASE)


def open_ledger(target: Target) -> Optional[Ledger]:
    """The target's ledger, or None before any research (a view never creates one)."""
    return Ledger(target.ledger_path) if target.ledger_path.exists() else None


# ---------------------------------------------------------------------------- experiments


def seed_stats(experiment: Experiment) -> tuple[Optional[float], Optional[float], int]:
    """Mean, standard deviation (None below 2 seeds) and count of the finished runs' metrics at the budget it was
    judged at (a best re-baselined at another budget has runs there too: another scale)."""
    values = [r.metric for r in experiment.runs if r.state is RunState.OK and r.metric is not None
              and math.isfinite(r.metric) and r.budget == experiment.budget]
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def rows(experiments: list[Experiment], config: Config, extra: Optional[dict] = None,
         diffs: bool = False) -> list[dict]:
    """Every experiment as a dict for views: status's fields, seed statistics and the effect over its parent.

    `effect` is positive when the experiment is better than its parent (whatever the metric's goal);
    `effect_se` is its standard error where both have several seeds."""
    extra = extra or {}
    chain = {e.commit: e for e in experiments if e.state in (State.BASELINE, State.KEPT) and e.commit}
    out = []
    for e in experiments:
        row = experiment_dict(e)
        mean, sd, n = seed_stats(e)
        parent = chain.get(e.parent) if e.parent else None
        effect, effect_se = getattr(e, "effect", None), getattr(e, "effect_se", None)  # the judge's, where recorded
        if parent is not None and e.ok and parent.ok:
            if effect is None:
                effect = (parent.metric - e.metric) if config.minimize else (e.metric - parent.metric)
            _, parent_sd, parent_n = seed_stats(parent)
            if effect_se is None and sd is not None and parent_sd is not None:
                effect_se = math.sqrt(sd ** 2 / n + parent_sd ** 2 / parent_n)
        row.update(sd=sd, seeds=n, parent_id=parent.index if parent else None, effect=effect, effect_se=effect_se,
                   created_at=e.created_at, finished_at=e.finished_at,
                   cost=(extra.get("cost") or {}).get("by_experiment", {}).get(e.index),
                   flags=[f for f in extra.get("flags", []) if f["id"] == e.index],
                   test=extra.get("test", {}).get(e.index))
        if diffs:
            row["diff"] = e.diff
        out.append(row)
    return out


def summary(ledger: Ledger, tag: str, target: Target, experiments: Optional[list[Experiment]] = None,
            extra: Optional[dict] = None) -> dict:
    """The research line at a glance: metric, baseline, best, counts, cost, session state."""
    config = target.config
    experiments = ledger.experiments(tag) if experiments is None else experiments
    extra = optional(ledger, tag) if extra is None else extra
    chain = [e for e in experiments if e.state in (State.BASELINE, State.KEPT)]
    baseline = next((e for e in chain if e.state is State.BASELINE), None)
    best = chain[-1] if chain else None
    counts = {s.value: 0 for s in State if s not in (State.BASELINE, State.PROPOSED)}
    for e in experiments:
        if e.state.value in counts:
            counts[e.state.value] += 1
    improvement = None
    if baseline and best and baseline.ok and best.ok:
        improvement = baseline.metric - best.metric if config.minimize else best.metric - baseline.metric
    brief = (lambda e: {"id": e.index, "metric": e.metric, "commit": e.commit, "description": e.description}
             if e else None)
    return {
        "tag": tag, "branch": ledger.tag(tag)["branch"], "base_commit": ledger.tag(tag)["base_commit"],
        "target": config.target.name, "metric": {"name": config.metric.name, "goal": config.metric.goal},
        "baseline": brief(baseline), "best": brief(best), "improvement": improvement,
        "relative_improvement": improvement / abs(baseline.metric) if improvement is not None and baseline.metric
        else None,
        "counts": counts, "experiments": len(experiments), "kept_chain": [e.index for e in chain],
        "seconds": sum(e.seconds or 0 for e in experiments),
        "cost": (extra.get("cost") or {}).get("total"), "flags": len(extra.get("flags", [])),
        "noise": extra.get("noise"), "session": session_state(ledger, tag, target.state),
        "suggestions": ledger.suggestions(tag) if hasattr(ledger, "suggestions") else [],
        "constraints": [constraints.describe(c, constraints.mean(baseline.runs, c.metric) if baseline else None)
                        for c in getattr(config, "constraints", [])],
    }


# ---------------------------------------------------------------------------- optional ledger parts


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def optional(ledger: Ledger, tag: str) -> dict:
    """What later ledger versions may hold, where present: cost, flags, noise model, test-split figures."""
    db = ledger.db
    index = dict(db.execute("SELECT id, idx FROM experiments WHERE tag = ?", (tag,)).fetchall())
    tables = _tables(db)
    verifications = _verifications(ledger, tag, index)
    test = _test(db, tables, index)
    for v in verifications:  # held-out test figures of the commits a verification ran on the test split
        if v["split"] == "test" and not v["scale"]:
            for role in ("baseline", "candidate"):
                if v[f"{role}_id"] is not None and v[role]["n"] and v[f"{role}_id"] not in test:
                    test[v[f"{role}_id"]] = v[role]
    return {"cost": _cost(db, tables, index), "flags": _flags(db, tables, index),
            "noise": _noise(db, tables, tag), "test": test, "verifications": verifications}


def _verifications(ledger: Ledger, tag: str, index: dict) -> list[dict]:
    """Verifications (held-out test, scaled re-runs) where the ledger records them: both sides' mean ± sd and
    the paired effect with its interval and verdict."""
    if not hasattr(ledger, "verifications"):
        return []
    by_commit = {}
    for id_, idx, commit, state in ledger.db.execute(
            "SELECT id, idx, commit_sha, state FROM experiments WHERE tag = ? ORDER BY idx", (tag,)):
        if commit and (commit not in by_commit or state in ("baseline", "kept")):
            by_commit[commit] = idx
    out = []
    for v in ledger.verifications(tag):
        settings, summary = v.get("settings") or {}, v.get("summary") or {}
        if isinstance(summary, str):
            summary = json.loads(summary or "{}")
        entry = {"id": v["id"], "kind": v["kind"], "split": settings.get("split", ""),
                 "budget": settings.get("budget", ""), "scale": settings.get("scale") or [],
                 "effect": (summary.get("effect") or {}) if isinstance(summary, dict) else {}}
        for role, key in (("baseline", "baseline_commit"), ("candidate", "candidate_commit")):
            source = settings.get(f"{role}_source") or v[key]
            values = [r["metric"] for r in v.get("runs", []) if r["role"] == role and r["state"] == "ok"
                      and r["metric"] is not None]
            entry[f"{role}_id"] = by_commit.get(source)
            entry[role] = {"mean": statistics.fmean(values) if values else None,
                           "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}
        out.append(entry)
    return out


def _cost(db, tables: set[str], index: dict) -> Optional[dict]:
    """Agent cost per experiment and in total: from cost/token columns of `experiments`, or of any table
    that names an experiment (agent calls, proposals)."""
    by_experiment: dict[int, dict] = {}
    sources = [("experiments", "id")] + [(t, key) for t in sorted(tables - {"experiments", "runs"})
                                          for key in ("experiment_id", "experiment") if key in _columns(db, t)]
    found = False
    for table, key in sources:
        columns = _columns(db, table)
        wanted = [c for c in (*COST_COLUMNS, *TOKEN_COLUMNS) if c in columns]
        if not wanted:
            continue
        found = True
        sums = ", ".join(f'SUM("{c}")' for c in wanted)
        for row in db.execute(f'SELECT "{key}", {sums} FROM "{table}" GROUP BY "{key}"'):
            if row[0] not in index:
                continue
            entry = by_experiment.setdefault(index[row[0]], {})
            for column, value in zip(wanted, row[1:]):
                name = "usd" if column in COST_COLUMNS else column
                if isinstance(value, (int, float)):
                    entry[name] = entry.get(name, 0) + value
    if not found:
        return None
    total: dict[str, float] = {}
    for entry in by_experiment.values():
        for name, value in entry.items():
            total[name] = total.get(name, 0) + value
    return {"by_experiment": by_experiment, "total": total or None}  # None: nothing was spent (offline agents)


def _flags(db, tables: set[str], index: dict) -> list[dict]:
    if "flags" not in tables:
        return []
    columns = _columns(db, "flags")
    key = next((k for k in ("experiment_id", "experiment") if k in columns), None)
    if key is None:
        return []
    kind = "kind" if "kind" in columns else "''"
    message = "message" if "message" in columns else ("reason" if "reason" in columns else "''")
    return [{"id": index[row[0]], "kind": row[1] or "", "message": row[2] or ""}
            for row in db.execute(f'SELECT "{key}", {kind}, {message} FROM flags ORDER BY rowid')
            if row[0] in index]


def _noise(db, tables: set[str], tag: str) -> Optional[dict]:
    """The latest row of a noise-model (calibration) table, as it stands."""
    for table in sorted(tables):
        if "noise" not in table and "calibrat" not in table:
            continue
        columns = _columns(db, table)
        where, args = ("WHERE tag = ?", (tag,)) if "tag" in columns else ("", ())
        row = db.execute(f'SELECT * FROM "{table}" {where} ORDER BY rowid DESC LIMIT 1', args).fetchone()
        if row:
            return {c: v for c, v in zip(columns, row)
                    if c not in ("id", "tag", "experiment_id", "created_at") and v is not None}
    return None


def _test(db, tables: set[str], index: dict) -> dict:
    """Test-split figures per experiment: runs with split = 'test', or a test_metric column."""
    found: dict[int, list[float]] = {}
    if "split" in _columns(db, "runs"):
        for experiment_id, metric in db.execute("SELECT experiment_id, metric FROM runs WHERE split = 'test' "
                                                "AND metric IS NOT NULL"):
            if experiment_id in index:
                found.setdefault(index[experiment_id], []).append(metric)
    if "test_metric" in _columns(db, "experiments"):
        for experiment_id, metric in db.execute("SELECT id, test_metric FROM experiments "
                                                "WHERE test_metric IS NOT NULL"):
            if experiment_id in index and index[experiment_id] not in found:
                found[index[experiment_id]] = [metric]
    return {i: {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}
            for i, v in found.items()}


# ---------------------------------------------------------------------------- sessions and slots


def session_state(ledger: Ledger, tag: str, state_dir: Path) -> Optional[dict]:
    """The latest session of the line: whether it is alive, and the control file's last command."""
    row = ledger.db.execute("SELECT id, agent, budget, pid, started_at, ended_at, end_reason FROM sessions "
                            "WHERE tag = ? ORDER BY id DESC LIMIT 1", (tag,)).fetchone()
    if row is None:
        return None
    session = dict(zip(("id", "agent", "budget", "pid", "started_at", "ended_at", "end_reason"), row))
    session["alive"] = session["ended_at"] is None and _pid_alive(session["pid"])
    session["control"] = control.read(state_dir)["command"] if session["alive"] else None
    return session


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    slot_of = _slot_column(ledger, [e.id for e in running])
    slots = sorted(p.name for p in target.worktrees.iterdir() if p.is_dir()) if target.worktrees.is_dir() else []
    out = []
    for e in running:
        slot = slot_of.get(e.id) or (slots[0] if len(slots) == 1 and len(running) == 1 else None)
        out.append(_running(target, ledger, tag, e, budget, now, slot, bool(session and session["alive"])))
    busy = {entry["slot"] for entry in out}
    out += [{"slot": name, "busy": False} for name in slots if name not in busy]
    return out


def _budget(spec: Optional[str]) -> Optional[Budget]:
    try:
        return Budget.parse(spec) if spec else None
    except ValueError:
        return None


def _slot_column(ledger: Ledger, ids: list[int]) -> dict[int, str]:
    if not ids or "slot" not in _columns(ledger.db, "experiments"):
        return {}
    marks = ",".join("?" * len(ids))
    return {i: s for i, s in ledger.db.execute(f"SELECT id, slot FROM experiments WHERE id IN ({marks})", ids) if s}


def _running(target: Target, ledger: Ledger, tag: str, e: Experiment, budget: Budget, now: float,
             slot: Optional[str], alive: bool) -> dict:
    config = target.config
    done = {r.seed for r in e.runs}
    directory = run_dir(target, tag, e.index)
    started_dirs = sorted(directory.glob("seed*"), key=lambda p: p.stat().st_mtime) if directory.is_dir() else []
    seeds = [int(p.name[4:]) for p in started_dirs if p.name[4:].isdigit()]
    seed = next((s for s in reversed(seeds) if s not in done),
                next((s for s in config.run.seeds if s not in done), config.run.seeds[-1]))
    (last_finished,) = ledger.db.execute("SELECT MAX(finished_at) FROM runs WHERE experiment_id = ?",
                                         (e.id,)).fetchone()
    started = max(e.created_at, last_finished or 0)
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
