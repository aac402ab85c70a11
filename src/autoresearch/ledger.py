"""The ledger: the SQLite database under `.autoresearch/` that records everything.

Every session, experiment (discarded ones included, with their diffs), run and decision. It is
the single source of truth: status, export, resume, the agents' memory and reports read it.
Schema changes are numbered, append-only migrations. Every write is one transaction, so a
harness killed at any moment leaves either the old or the new state, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Optional

from .costs import Usage
from .records import Experiment, RunRecord, RunState, State

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
]

_EXPERIMENT_COLUMNS = ("id, tag, idx, state, parent, commit_sha, description, agent, diff, lines_added, "
                       "lines_removed, reason, knobs, metric, seconds, session_id, created_at, finished_at")


class Ledger:
    """One target's ledger. Open it with `Ledger(path)`; it migrates itself."""

    def __init__(self, path: Path):
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
        self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = {row[0] for row in self.db.execute("SELECT name FROM migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            with self._transaction():
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
        rows = self.db.execute("SELECT id, agent, budget, started_at, ended_at, end_reason FROM sessions "
                               "WHERE tag = ? ORDER BY id", (tag,)).fetchall()
        return [dict(zip(("id", "agent", "budget", "started_at", "ended_at", "end_reason"), r)) for r in rows]

    # ---------------------------------------------------------------- experiments

    def add_experiment(self, *, tag: str, session_id: Optional[int], state: State, parent: Optional[str],
                       commit: Optional[str], description: str, agent: str, diff: str = "",
                       lines_added: int = 0, lines_removed: int = 0, reason: str = "",
                       knobs: Optional[dict] = None) -> Experiment:
        now = time.time()
        with self._transaction():
            (index,) = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM experiments WHERE tag = ?",
                                       (tag,)).fetchone()
            cursor = self.db.execute(
                "INSERT INTO experiments (tag, idx, session_id, state, parent, commit_sha, description, agent, "
                "diff, lines_added, lines_removed, reason, knobs, created_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tag, index, session_id, State(state).value, parent, commit, description, agent, diff,
                 lines_added, lines_removed, reason, json.dumps(knobs or {}), now,
                 now if State(state).final else None))
            return self.experiment(cursor.lastrowid)

    def set_state(self, experiment_id: int, state: State, *, metric: Optional[float] = None,
                  reason: Optional[str] = None, seconds: Optional[float] = None) -> Experiment:
        """Move an experiment to a new state; a final state is written once and never changed."""
        with self._transaction():
            (current,) = self.db.execute("SELECT state FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if State(current).final:
                raise ValueError(f"experiment {experiment_id} is already {current}; a finished experiment is immutable")
            self.db.execute(
                "UPDATE experiments SET state = ?, metric = COALESCE(?, metric), reason = COALESCE(?, reason), "
                "seconds = COALESCE(?, seconds), finished_at = ? WHERE id = ?",
                (State(state).value, metric, reason, seconds, time.time() if State(state).final else None,
                 experiment_id))
        return self.experiment(experiment_id)

    def add_run(self, run: RunRecord) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO runs (experiment_id, seed, state, metric, metrics, seconds, peak_memory_mb, exit_code, "
                "reason, log_tail, log_path, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.experiment_id, run.seed, RunState(run.state).value, run.metric, json.dumps(run.metrics),
                 run.seconds, run.peak_memory_mb, run.exit_code, run.reason, run.log_tail, run.log_path,
                 time.time()))

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

    _COST_COLUMNS = "model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, requests, cost_usd"

    def add_agent_cost(self, experiment_id: int, session_id: Optional[int], agent: str, usage: Usage) -> None:
        with self._transaction():
            self.db.execute(
                f"INSERT INTO agent_costs (experiment_id, session_id, agent, {self._COST_COLUMNS}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (experiment_id, session_id, agent, usage.model, usage.input_tokens, usage.output_tokens,
                 usage.cache_read_tokens, usage.cache_write_tokens, usage.requests, usage.cost_usd, time.time()))

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
                    f"reason, log_tail, log_path FROM runs WHERE experiment_id IN ({','.join('?' * len(chunk))}) "
                    "ORDER BY id", chunk):
                out.setdefault(row[1], []).append(RunRecord(
                    id=row[0], experiment_id=row[1], seed=row[2], state=RunState(row[3]), metric=row[4],
                    metrics=json.loads(row[5]), seconds=row[6], peak_memory_mb=row[7], exit_code=row[8],
                    reason=row[9], log_tail=row[10], log_path=row[11]))
        return {key: tuple(value) for key, value in out.items()}

    @staticmethod
    def _experiment(row: tuple, runs: tuple) -> Experiment:
        (id_, tag, idx, state, parent, commit, description, agent, diff, added, removed, reason, knobs, metric,
         seconds, session_id, created_at, finished_at) = row
        return Experiment(id=id_, tag=tag, index=idx, state=State(state), parent=parent, commit=commit,
                          description=description, agent=agent, diff=diff, lines_added=added,
                          lines_removed=removed, reason=reason, knobs=json.loads(knobs), metric=metric,
                          seconds=seconds, session_id=session_id, created_at=created_at,
                          finished_at=finished_at, runs=runs)


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
