"""The ledger: the SQLite database under `.autoresearch/` that records everything.

Every session, experiment (discarded ones included, with their diffs), run and decision. It is
the single source of truth: status, export, resume, the agents' memory and reports read it.
Schema changes are numbered, append-only migrations. Every write is one transaction, so a
harness killed at any moment leaves either the old or the new state, never half of one. The
threads of one session (its slots, the proposer) share one connection: every public method runs
under the ledger's lock, so their transactions never interleave.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Optional

from .costs import Usage
from .records import Experiment, Flag, Note, RunRecord, RunState, State, Suggestion

MIGRATIONS: list[tuple[str, str]] = [
    ("001_initial", """
        CREATE TABLE tags (
            tag TEXT PRIMARY KEY,
            branch TEXT NOT NULL,
            base_commit TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            agent TEXT NOT NULL,
            budget TEXT NOT NULL,
            argv TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            end_reason TEXT
        );
        CREATE TABLE experiments (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            idx INTEGER NOT NULL,
            session_id INTEGER REFERENCES sessions(id),
            state TEXT NOT NULL,
            parent TEXT,
            commit_sha TEXT,
            description TEXT NOT NULL,
            agent TEXT NOT NULL,
            diff TEXT NOT NULL DEFAULT '',
            lines_added INTEGER NOT NULL DEFAULT 0,
            lines_removed INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            knobs TEXT NOT NULL DEFAULT '{}',
            metric REAL,
            seconds REAL,
            created_at REAL NOT NULL,
            finished_at REAL,
            UNIQUE (tag, idx)
        );
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            seed INTEGER NOT NULL,
            state TEXT NOT NULL,
            metric REAL,
            metrics TEXT NOT NULL DEFAULT '{}',
            seconds REAL NOT NULL DEFAULT 0,
            peak_memory_mb REAL,
            exit_code INTEGER,
            reason TEXT NOT NULL DEFAULT '',
            log_tail TEXT NOT NULL DEFAULT '',
            log_path TEXT NOT NULL DEFAULT '',
            finished_at REAL NOT NULL
        );
        CREATE INDEX runs_by_experiment ON runs(experiment_id);
    """),
    ("002_flags", """
        CREATE TABLE flags (
            id INTEGER PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            run_id INTEGER REFERENCES runs(id),
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX flags_by_experiment ON flags(experiment_id);
    """),
    ("003_agent_costs", """
        CREATE TABLE agent_costs (
            id INTEGER PRIMARY KEY,
            experiment_id INTEGER NOT NULL REFERENCES experiments(id),
            session_id INTEGER REFERENCES sessions(id),
            agent TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            created_at REAL NOT NULL
        );
        CREATE INDEX agent_costs_by_experiment ON agent_costs(experiment_id);
        CREATE INDEX agent_costs_by_session ON agent_costs(session_id);
    """),
    ("004_statistics", """
        ALTER TABLE experiments ADD COLUMN effect REAL;
        ALTER TABLE experiments ADD COLUMN effect_se REAL;
        ALTER TABLE experiments ADD COLUMN margin REAL;
        CREATE TABLE noise (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            experiment_id INTEGER REFERENCES experiments(id),
            budget TEXT NOT NULL,
            runs INTEGER NOT NULL,
            mean REAL,
            sd REAL,
            ci_low REAL,
            ci_high REAL,
            steps_mean REAL,
            steps_sd REAL,
            pooled_sd REAL,
            pooled_df INTEGER,
            created_at REAL NOT NULL
        );
        CREATE TABLE verifications (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            kind TEXT NOT NULL,
            settings TEXT NOT NULL DEFAULT '{}',
            baseline_commit TEXT NOT NULL,
            candidate_commit TEXT NOT NULL,
            summary TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE TABLE verification_runs (
            id INTEGER PRIMARY KEY,
            verification_id INTEGER NOT NULL REFERENCES verifications(id),
            role TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            seed INTEGER NOT NULL,
            split TEXT NOT NULL,
            state TEXT NOT NULL,
            metric REAL,
            seconds REAL NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            log_path TEXT NOT NULL DEFAULT '',
            finished_at REAL NOT NULL
        );
    """),
    ("005_slots", """
        ALTER TABLE runs ADD COLUMN slot TEXT;
        ALTER TABLE runs ADD COLUMN started_at REAL;
        ALTER TABLE experiments ADD COLUMN slot TEXT;
        ALTER TABLE experiments ADD COLUMN proposed_on TEXT;
        ALTER TABLE experiments ADD COLUMN origin INTEGER;
        CREATE INDEX runs_by_slot ON runs(slot, started_at);
    """),
    ("006_programs", """
        CREATE TABLE suggestions (
            id INTEGER PRIMARY KEY,
            tag TEXT,
            text TEXT NOT NULL,
            source TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            experiment_id INTEGER REFERENCES experiments(id),
            taken_at REAL
        );
    """),
    ("007_verification_slots", """
        ALTER TABLE verification_runs ADD COLUMN slot TEXT;
        ALTER TABLE verification_runs ADD COLUMN started_at REAL;
    """),
    ("008_transfer", """
        CREATE TABLE transfers (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            session_id INTEGER REFERENCES sessions(id),
            settings TEXT NOT NULL DEFAULT '{}',
            summary TEXT,
            created_at REAL NOT NULL,
            finished_at REAL
        );
        CREATE TABLE transfer_runs (
            id INTEGER PRIMARY KEY,
            transfer_id INTEGER NOT NULL REFERENCES transfers(id),
            scale TEXT NOT NULL,
            variant TEXT NOT NULL,
            commit_sha TEXT NOT NULL,
            seed INTEGER NOT NULL,
            split TEXT NOT NULL,
            budget TEXT NOT NULL,
            state TEXT NOT NULL,
            metric REAL,
            seconds REAL NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '',
            log_path TEXT NOT NULL DEFAULT '',
            finished_at REAL NOT NULL
        );
        CREATE INDEX transfer_runs_by_transfer ON transfer_runs(transfer_id);
    """),
    ("009_run_budget", """
        ALTER TABLE runs ADD COLUMN budget TEXT;
        ALTER TABLE experiments ADD COLUMN analysis TEXT;
        -- a run happened inside the session of its tag that had started last (one session per target at a time)
        UPDATE runs SET budget = (
            SELECT s.budget FROM sessions s JOIN experiments e ON e.tag = s.tag
            WHERE e.id = runs.experiment_id AND s.started_at <= runs.finished_at
            ORDER BY s.started_at DESC LIMIT 1);
    """),
    ("010_agent_notes", """
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY,
            tag TEXT NOT NULL REFERENCES tags(tag),
            session_id INTEGER REFERENCES sessions(id),
            after_idx INTEGER NOT NULL,
            agent TEXT NOT NULL DEFAULT '',
            text TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX notes_by_tag ON notes(tag, id);
        ALTER TABLE agent_costs ADD COLUMN checks INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE agent_costs ADD COLUMN check_seconds REAL NOT NULL DEFAULT 0;
    """),
]

_EXPERIMENT_COLUMNS = ("id, tag, idx, state, parent, commit_sha, description, agent, diff, lines_added, "
                       "lines_removed, reason, knobs, metric, seconds, session_id, created_at, finished_at, "
                       "effect, effect_se, margin, slot, proposed_on, origin, analysis")


def _serialised(cls):
    """Every public method of `cls` under the instance's lock (an RLock: methods call one another)."""
    def locked(method):
        @functools.wraps(method)
        def call(self, *args, **kwargs):
            with self.lock:
                return method(self, *args, **kwargs)
        return call

    for name, member in list(vars(cls).items()):
        if callable(member) and not name.startswith("_"):
            setattr(cls, name, locked(member))
    return cls


@_serialised
class Ledger:
    """One target's ledger. Open it with `Ledger(path)`; it migrates itself. Safe to share between threads."""

    def __init__(self, path: Path):
        self.lock = threading.RLock()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        self.db.close()

    # ---------------------------------------------------------------- schema

    def _migrate(self) -> None:
        # One write transaction for the check and the migrations: a second process opening a fresh ledger
        # at the same moment (a reader, `status`, a dashboard) waits for the lock and then sees them done,
        # instead of both reading "not applied" and the second failing on "table already exists".
        with self._transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            done = {row[0] for row in self.db.execute("SELECT name FROM migrations")}
            for name, sql in MIGRATIONS:
                if name in done:
                    continue
                for statement in sql.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))

    def _transaction(self):
        return _Transaction(self.db)

    # ---------------------------------------------------------------- tags and sessions

    def tag(self, tag: str) -> Optional[dict]:
        row = self.db.execute("SELECT tag, branch, base_commit, created_at FROM tags WHERE tag = ?", (tag,)).fetchone()
        return dict(zip(("tag", "branch", "base_commit", "created_at"), row)) if row else None

    def latest_tag(self) -> Optional[str]:
        row = self.db.execute(
            "SELECT t.tag FROM tags t LEFT JOIN sessions s ON s.tag = t.tag "
            "GROUP BY t.tag ORDER BY MAX(COALESCE(s.started_at, t.created_at)) DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def create_tag(self, tag: str, branch: str, base_commit: str) -> None:
        with self._transaction():
            self.db.execute("INSERT INTO tags VALUES (?, ?, ?, ?)", (tag, branch, base_commit, time.time()))

    def start_session(self, tag: str, agent: str, budget: str, argv: list[str], pid: int) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO sessions (tag, agent, budget, argv, pid, started_at) VALUES (?, ?, ?, ?, ?, ?)",
                (tag, agent, budget, json.dumps(argv), pid, time.time()))
            return cursor.lastrowid

    def end_session(self, session_id: int, reason: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE sessions SET ended_at = ?, end_reason = ? WHERE id = ?",
                            (time.time(), reason, session_id))

    def sessions(self, tag: str) -> list[dict]:
        rows = self.db.execute("SELECT id, agent, budget, pid, started_at, ended_at, end_reason FROM sessions "
                               "WHERE tag = ? ORDER BY id", (tag,)).fetchall()
        return [dict(zip(("id", "agent", "budget", "pid", "started_at", "ended_at", "end_reason"), r)) for r in rows]

    # ---------------------------------------------------------------- experiments

    def add_experiment(self, *, tag: str, session_id: Optional[int], state: State, parent: Optional[str],
                       commit: Optional[str], description: str, agent: str, diff: str = "",
                       lines_added: int = 0, lines_removed: int = 0, reason: str = "",
                       knobs: Optional[dict] = None, slot: Optional[str] = None, proposed_on: Optional[str] = None,
                       origin: Optional[int] = None) -> Experiment:
        now = time.time()
        with self._transaction():
            (index,) = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM experiments WHERE tag = ?",
                                       (tag,)).fetchone()
            cursor = self.db.execute(
                "INSERT INTO experiments (tag, idx, session_id, state, parent, commit_sha, description, agent, "
                "diff, lines_added, lines_removed, reason, knobs, created_at, finished_at, slot, proposed_on, origin) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tag, index, session_id, State(state).value, parent, commit, description, agent, diff,
                 lines_added, lines_removed, reason, json.dumps(knobs or {}), now,
                 now if State(state).final else None, slot, proposed_on, origin))
            return self.experiment(cursor.lastrowid)

    def set_state(self, experiment_id: int, state: State, *, metric: Optional[float] = None,
                  reason: Optional[str] = None, seconds: Optional[float] = None, effect: Optional[float] = None,
                  effect_se: Optional[float] = None, margin: Optional[float] = None,
                  analysis: Optional[str] = None) -> Experiment:
        """Move an experiment to a new state; a final state is written once and never changed."""
        with self._transaction():
            (current,) = self.db.execute("SELECT state FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if State(current).final:
                raise ValueError(f"experiment {experiment_id} is already {current}; a finished experiment is immutable")
            self.db.execute(
                "UPDATE experiments SET state = ?, metric = COALESCE(?, metric), reason = COALESCE(?, reason), "
                "seconds = COALESCE(?, seconds), effect = ?, effect_se = ?, margin = ?, analysis = ?, finished_at = ? "
                "WHERE id = ?",
                (State(state).value, metric, reason, seconds, effect, effect_se, margin, analysis,
                 time.time() if State(state).final else None, experiment_id))
        return self.experiment(experiment_id)

    def refine_metric(self, experiment_id: int, metric: float) -> Experiment:
        """A finished experiment's metric after more runs of it (calibration): the mean over all of them.
        Its state and decision stay as they were."""
        with self._transaction():
            self.db.execute("UPDATE experiments SET metric = ? WHERE id = ?", (metric, experiment_id))
        return self.experiment(experiment_id)

    def add_run(self, run: RunRecord) -> None:
        """The run and its flags, in one transaction."""
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO runs (experiment_id, seed, state, metric, metrics, seconds, peak_memory_mb, exit_code, "
                "reason, log_tail, log_path, finished_at, slot, started_at, budget) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.experiment_id, run.seed, RunState(run.state).value, run.metric, json.dumps(run.metrics),
                 run.seconds, run.peak_memory_mb, run.exit_code, run.reason, run.log_tail, run.log_path,
                 time.time(), run.slot, run.started_at, run.budget))
            for flag in run.flags:
                self._insert_flag(run.experiment_id, cursor.lastrowid, flag)

    # ---------------------------------------------------------------- flags: the audit trail

    def add_flag(self, experiment_id: int, flag: Flag) -> None:
        with self._transaction():
            self._insert_flag(experiment_id, None, flag)

    def _insert_flag(self, experiment_id: int, run_id: Optional[int], flag: Flag) -> None:
        self.db.execute("INSERT INTO flags (experiment_id, run_id, kind, message, created_at) VALUES (?, ?, ?, ?, ?)",
                        (experiment_id, run_id, flag.kind, flag.message, time.time()))

    def flags(self, tag: str) -> list[dict]:
        """Every flag of the tag's experiments, oldest first: index, seed (None: the experiment's), kind, message."""
        rows = self.db.execute(
            "SELECT e.idx, r.seed, f.kind, f.message, f.created_at FROM flags f "
            "JOIN experiments e ON e.id = f.experiment_id LEFT JOIN runs r ON r.id = f.run_id "
            "WHERE e.tag = ? ORDER BY f.id", (tag,)).fetchall()
        return [dict(zip(("index", "seed", "kind", "message", "created_at"), row)) for row in rows]

    def interrupt_unfinished(self, tag: str, reason: str) -> list[int]:
        """Mark every experiment left proposed or running (a killed harness) as interrupted."""
        with self._transaction():
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM experiments WHERE tag = ? AND state IN (?, ?)",
                (tag, State.PROPOSED.value, State.RUNNING.value))]
            self.db.execute(
                "UPDATE experiments SET state = ?, reason = ?, finished_at = ? WHERE tag = ? AND state IN (?, ?)",
                (State.INTERRUPTED.value, reason, time.time(), tag, State.PROPOSED.value, State.RUNNING.value))
        return ids

    # ---------------------------------------------------------------- agent costs (tokens and dollars per proposal)

    # in the order of costs.Usage's fields
    _COST_COLUMNS = ("model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, requests, cost_usd, "
                     "checks, check_seconds")

    def add_agent_cost(self, experiment_id: int, session_id: Optional[int], agent: str, usage: Usage) -> None:
        with self._transaction():
            self.db.execute(
                f"INSERT INTO agent_costs (experiment_id, session_id, agent, {self._COST_COLUMNS}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (experiment_id, session_id, agent, usage.model, usage.input_tokens, usage.output_tokens,
                 usage.cache_read_tokens, usage.cache_write_tokens, usage.requests, usage.cost_usd, usage.checks,
                 usage.check_seconds, time.time()))

    def agent_costs(self, tag: str) -> dict[int, Usage]:
        """Experiment index -> what its proposal cost, for the experiments that were proposed by a paid agent."""
        rows = self.db.execute(
            f"SELECT e.idx, {', '.join('c.' + c for c in self._COST_COLUMNS.split(', '))} FROM agent_costs c "
            "JOIN experiments e ON e.id = c.experiment_id WHERE e.tag = ? ORDER BY c.id", (tag,)).fetchall()
        out: dict[int, Usage] = {}
        for index, *fields in rows:
            usage = Usage(*fields)
            out[index] = out[index] + usage if index in out else usage
        return out

    def session_spend(self, session_id: int) -> Usage:
        """Everything the agent used in one session (cost None when any proposal's price was unknown)."""
        total = Usage(cost_usd=0.0)
        for fields in self.db.execute(f"SELECT {self._COST_COLUMNS} FROM agent_costs WHERE session_id = ?",
                                      (session_id,)):
            total = total + Usage(*fields)
        return total

    # ---------------------------------------------------------------- queries

    def experiment(self, experiment_id: int) -> Experiment:
        row = self.db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE id = ?",
                              (experiment_id,)).fetchone()
        if row is None:
            raise KeyError(f"no experiment {experiment_id}")
        return self._experiment(row, self._runs([experiment_id]).get(experiment_id, ()))

    def experiments(self, tag: str) -> list[Experiment]:
        rows = self.db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tag = ? ORDER BY idx",
                               (tag,)).fetchall()
        runs = self._runs([row[0] for row in rows])
        return [self._experiment(row, runs.get(row[0], ())) for row in rows]

    def best(self, tag: str) -> Optional[Experiment]:
        """The head of the kept chain: the last kept experiment, else the baseline."""
        row = self.db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tag = ? AND state IN (?, ?) "
                              "ORDER BY idx DESC LIMIT 1", (tag, State.BASELINE.value, State.KEPT.value)).fetchone()
        return self._experiment(row, self._runs([row[0]]).get(row[0], ())) if row else None

    def baseline(self, tag: str) -> Optional[Experiment]:
        row = self.db.execute(f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments WHERE tag = ? AND state = ? "
                              "ORDER BY idx LIMIT 1", (tag, State.BASELINE.value)).fetchone()
        return self._experiment(row, self._runs([row[0]]).get(row[0], ())) if row else None

    def _runs(self, experiment_ids: Iterable[int]) -> dict[int, tuple]:
        ids = list(experiment_ids)
        out: dict[int, list] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            for row in self.db.execute(
                    "SELECT id, experiment_id, seed, state, metric, metrics, seconds, peak_memory_mb, exit_code, "
                    f"reason, log_tail, log_path, slot, started_at, budget FROM runs WHERE experiment_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY id", chunk):
                out.setdefault(row[1], []).append(RunRecord(
                    id=row[0], experiment_id=row[1], seed=row[2], state=RunState(row[3]), metric=row[4],
                    metrics=json.loads(row[5]), seconds=row[6], peak_memory_mb=row[7], exit_code=row[8],
                    reason=row[9], log_tail=row[10], log_path=row[11], slot=row[12], started_at=row[13],
                    budget=row[14]))
        return {key: tuple(value) for key, value in out.items()}

    @staticmethod
    def _experiment(row: tuple, runs: tuple) -> Experiment:
        (id_, tag, idx, state, parent, commit, description, agent, diff, added, removed, reason, knobs, metric,
         seconds, session_id, created_at, finished_at, effect, effect_se, margin, slot, proposed_on, origin,
         analysis) = row
        return Experiment(id=id_, tag=tag, index=idx, state=State(state), parent=parent, commit=commit,
                          description=description, agent=agent, diff=diff, lines_added=added,
                          lines_removed=removed, reason=reason, knobs=json.loads(knobs), metric=metric,
                          seconds=seconds, session_id=session_id, created_at=created_at,
                          finished_at=finished_at, effect=effect, effect_se=effect_se, margin=margin, runs=runs,
                          slot=slot, proposed_on=proposed_on, origin=origin, analysis=analysis)

    def slot_activity(self, tag: str) -> list[dict]:
        """Per slot, over the tag's sessions: runs, busy seconds (wall time of its runs), the span from
        its first run's start to its last run's end, and what runs there now (an experiment left running)."""
        rows = self.db.execute(
            "SELECT r.slot, COUNT(*), SUM(r.seconds), MIN(r.started_at), MAX(r.finished_at) FROM runs r "
            "JOIN experiments e ON e.id = r.experiment_id WHERE e.tag = ? AND r.slot IS NOT NULL "
            "GROUP BY r.slot ORDER BY r.slot", (tag,)).fetchall()
        running = dict(self.db.execute(
            "SELECT slot, idx FROM experiments WHERE tag = ? AND state = ? AND slot IS NOT NULL",
            (tag, State.RUNNING.value)).fetchall())
        out = []
        for slot, runs, busy, first, last in rows:
            span = (last - first) if first is not None and last is not None else None
            out.append({"slot": slot, "runs": runs, "busy_seconds": busy or 0.0, "span_seconds": span,
                        "utilisation": (busy / span) if busy and span else None, "running": running.pop(slot, None)})
        out += [{"slot": slot, "runs": 0, "busy_seconds": 0.0, "span_seconds": None, "utilisation": None,
                 "running": idx} for slot, idx in running.items()]
        return out

    # ---------------------------------------------------------------- noise and verifications

    def add_noise(self, tag: str, experiment_id: Optional[int], budget: str, record: dict) -> None:
        """A calibration's figures: runs, mean, sd, ci_low, ci_high, steps_mean, steps_sd, pooled_sd, pooled_df."""
        keys = ("runs", "mean", "sd", "ci_low", "ci_high", "steps_mean", "steps_sd", "pooled_sd", "pooled_df")
        with self._transaction():
            self.db.execute(f"INSERT INTO noise (tag, experiment_id, budget, {', '.join(keys)}, created_at) "
                            f"VALUES (?, ?, ?, {', '.join('?' * len(keys))}, ?)",
                            (tag, experiment_id, budget, *(record.get(k) for k in keys), time.time()))

    def noise_history(self, tag: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT n.id, e.idx, n.budget, n.runs, n.mean, n.sd, n.ci_low, n.ci_high, n.steps_mean, n.steps_sd, "
            "n.pooled_sd, n.pooled_df, n.created_at FROM noise n LEFT JOIN experiments e ON e.id = n.experiment_id "
            "WHERE n.tag = ? ORDER BY n.id", (tag,)).fetchall()
        keys = ("id", "index", "budget", "runs", "mean", "sd", "ci_low", "ci_high", "steps_mean", "steps_sd",
                "pooled_sd", "pooled_df", "created_at")
        return [dict(zip(keys, row)) for row in rows]

    def start_verification(self, tag: str, kind: str, settings: dict, baseline_commit: str,
                           candidate_commit: str) -> int:
        with self._transaction():
            return self.db.execute(
                "INSERT INTO verifications (tag, kind, settings, baseline_commit, candidate_commit, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (tag, kind, json.dumps(settings), baseline_commit, candidate_commit, time.time())).lastrowid

    def add_verification_run(self, verification_id: int, role: str, commit: str, split: str, run: RunRecord) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO verification_runs (verification_id, role, commit_sha, seed, split, state, metric, "
                "seconds, reason, log_path, finished_at, slot, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (verification_id, role, commit, run.seed, split, RunState(run.state).value, run.metric, run.seconds,
                 run.reason, run.log_path, time.time(), run.slot, run.started_at))

    def finish_verification(self, verification_id: int, summary: dict) -> None:
        with self._transaction():
            self.db.execute("UPDATE verifications SET summary = ?, finished_at = ? WHERE id = ?",
                            (json.dumps(summary), time.time(), verification_id))

    def verifications(self, tag: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT id, kind, settings, baseline_commit, candidate_commit, summary, created_at, finished_at "
            "FROM verifications WHERE tag = ? ORDER BY id", (tag,)).fetchall()
        out = []
        for id_, kind, settings, base, cand, summary, created, finished in rows:
            runs = self.db.execute("SELECT role, commit_sha, seed, split, state, metric, seconds, reason, log_path, "
                                   "slot, started_at FROM verification_runs WHERE verification_id = ? ORDER BY id",
                                   (id_,)).fetchall()
            out.append({"id": id_, "kind": kind, "settings": json.loads(settings), "baseline_commit": base,
                        "candidate_commit": cand, "summary": json.loads(summary) if summary else None,
                        "created_at": created, "finished_at": finished,
                        "runs": [dict(zip(("role", "commit", "seed", "split", "state", "metric", "seconds", "reason",
                                           "log_path", "slot", "started_at"), r)) for r in runs]})
        return out

    # ---------------------------------------------------------------- transfer to a larger scale (transfer.py)

    def start_transfer(self, tag: str, session_id: Optional[int], settings: dict) -> int:
        with self._transaction():
            return self.db.execute("INSERT INTO transfers (tag, session_id, settings, created_at) VALUES (?, ?, ?, ?)",
                                   (tag, session_id, json.dumps(settings), time.time())).lastrowid

    def add_transfer_run(self, transfer_id: int, scale: str, variant: str, commit: str, split: str, budget: str,
                         run: RunRecord) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO transfer_runs (transfer_id, scale, variant, commit_sha, seed, split, budget, state, metric, "
                "seconds, reason, log_path, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (transfer_id, scale, variant, commit, run.seed, split, budget, RunState(run.state).value, run.metric,
                 run.seconds, run.reason, run.log_path, time.time()))

    def finish_transfer(self, transfer_id: int, summary: dict) -> None:
        with self._transaction():
            self.db.execute("UPDATE transfers SET summary = ?, finished_at = ? WHERE id = ?",
                            (json.dumps(summary), time.time(), transfer_id))

    def transfers(self, tag: str) -> list[dict]:
        """Every transfer of the line, oldest first, with its settings (the plan), runs and summary (None while it
        runs, or when it was stopped)."""
        out = []
        for id_, session_id, settings, summary, created, finished in self.db.execute(
                "SELECT id, session_id, settings, summary, created_at, finished_at FROM transfers WHERE tag = ? "
                "ORDER BY id", (tag,)).fetchall():
            runs = self.db.execute("SELECT scale, variant, commit_sha, seed, split, budget, state, metric, seconds, "
                                   "reason, log_path FROM transfer_runs WHERE transfer_id = ? ORDER BY id",
                                   (id_,)).fetchall()
            out.append({"id": id_, "session_id": session_id, "settings": json.loads(settings),
                        "summary": json.loads(summary) if summary else None, "created_at": created,
                        "finished_at": finished,
                        "runs": [dict(zip(("scale", "variant", "commit", "seed", "split", "budget", "state", "metric",
                                           "seconds", "reason", "log_path"), r)) for r in runs]})
        return out

    # ---------------------------------------------------------------- suggestions from the human

    def add_suggestion(self, text: str, tag: Optional[str] = None, source: str = "") -> Suggestion:
        with self._transaction():
            cursor = self.db.execute("INSERT INTO suggestions (tag, text, source, created_at) VALUES (?, ?, ?, ?)",
                                     (tag, text, source, time.time()))
        return Suggestion(cursor.lastrowid, text, tag, time.time())

    def pending_suggestions(self, tag: str) -> list[Suggestion]:
        """The suggestions for `tag` (or for no tag in particular) that no proposal has taken up yet, oldest first."""
        rows = self.db.execute("SELECT id, text, tag, created_at FROM suggestions WHERE experiment_id IS NULL AND "
                               "(tag = ? OR tag IS NULL) ORDER BY id", (tag,)).fetchall()
        return [Suggestion(*row) for row in rows]

    def take_suggestions(self, ids: list[int], experiment_id: int) -> None:
        with self._transaction():
            self.db.executemany("UPDATE suggestions SET experiment_id = ?, taken_at = ?, "
                                "tag = COALESCE(tag, (SELECT tag FROM experiments WHERE id = ?)) "
                                "WHERE id = ? AND experiment_id IS NULL",
                                [(experiment_id, time.time(), experiment_id, id_) for id_ in ids])

    def suggestions(self, tag: str) -> list[dict]:
        """Every suggestion for `tag` (and the untagged ones still waiting), with the experiment that took it up and
        its outcome."""
        rows = self.db.execute(
            "SELECT s.id, s.text, s.source, s.created_at, s.taken_at, e.idx, e.state, e.metric, e.effect, e.reason, "
            "e.description FROM suggestions s LEFT JOIN experiments e ON e.id = s.experiment_id "
            "WHERE s.tag = ? OR s.tag IS NULL ORDER BY s.id", (tag,)).fetchall()
        keys = ("id", "text", "source", "created_at", "taken_at", "experiment", "state", "metric", "effect", "reason",
                "description")
        return [dict(zip(keys, row)) for row in rows]


    # ---------------------------------------------------------------- the agent's notes

    def add_note(self, tag: str, session_id: Optional[int], agent: str, text: str) -> Note:
        """A note of the agent's, placed after the latest experiment of `tag` (in one transaction with reading it)."""
        now = time.time()
        with self._transaction():
            (after,) = self.db.execute("SELECT COALESCE(MAX(idx), 0) FROM experiments WHERE tag = ?", (tag,)).fetchone()
            cursor = self.db.execute("INSERT INTO notes (tag, session_id, after_idx, agent, text, created_at) "
                                     "VALUES (?, ?, ?, ?, ?, ?)", (tag, session_id, after, agent, text, now))
        return Note(cursor.lastrowid, tag, text, after, agent, now)

    def notes(self, tag: str, latest: Optional[int] = None) -> list[Note]:
        """The notes of `tag`, oldest first (only the `latest` ones when given)."""
        rows = self.db.execute("SELECT id, tag, text, after_idx, agent, created_at FROM notes WHERE tag = ? "
                               "ORDER BY id DESC" + (" LIMIT ?" if latest is not None else ""),
                               (tag, latest) if latest is not None else (tag,)).fetchall()
        return [Note(*row) for row in reversed(rows)]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (KeyboardInterrupt included)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
