"""The experiment store: one SQLite file per search, ``DIR/experiment.db``.

Only the search driver writes it (WAL mode, so ``nasnet show`` can read while it runs).
Tables:

* ``schema_version(version)`` - one row; a file written by a newer nasnet is refused.
* ``config(id = 1, json, created)`` - the experiment's options.
* ``trials`` - one row per child: id, genotype JSON, canonical hash, status
  (``queued`` / ``running`` / ``done`` / ``failed``), reward, metrics JSON, params, mult_adds,
  seed, worker, created / started / finished (Unix times), error text, proposal JSON (what
  the strategy needs to be told the result), ``ask_seq`` / ``tell_seq`` (positions of the
  trial's ask and tell in the experiment's event sequence, used to replay them on resume),
  ``reused_from`` (the trial whose result was reused) and ``attempts``.
* ``strategy_states(id, seq, told, created, state)`` - the strategy's state after an
  update, as ``torch.save`` bytes, with the event ``seq`` it follows. The newest
  :data:`KEEP_STATES` are kept.
* ``resumes(id, time, state_id, state_digest, replayed)`` - a record of every resume.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nasnet.space import Genotype

#: Version of the layout below; bump it (and migrate) when the tables change.
SCHEMA_VERSION = 1

#: File name of the store inside an experiment directory.
DB_NAME = "experiment.db"

#: Strategy states kept (older ones are deleted).
KEEP_STATES = 10

STATUSES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS config (
    id INTEGER PRIMARY KEY CHECK (id = 1), json TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY,
    genotype TEXT NOT NULL,
    hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    reward REAL,
    metrics TEXT,
    params INTEGER,
    mult_adds INTEGER,
    seed INTEGER NOT NULL,
    worker TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    proposal TEXT NOT NULL,
    ask_seq INTEGER NOT NULL,
    tell_seq INTEGER,
    reused_from INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS trials_hash ON trials (hash, status);
CREATE INDEX IF NOT EXISTS trials_status ON trials (status);
CREATE TABLE IF NOT EXISTS strategy_states (
    id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, told INTEGER NOT NULL,
    created REAL NOT NULL, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS resumes (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, state_id INTEGER, state_digest TEXT,
    replayed INTEGER NOT NULL);
"""


class StoreError(Exception):
    """The experiment store cannot be used (missing, newer schema, not a database)."""


@dataclass
class TrialRecord:
    """One row of ``trials``."""

    id: int
    genotype_json: str
    hash: str
    status: str
    reward: float | None
    metrics: dict[str, Any]
    params: int | None
    mult_adds: int | None
    seed: int
    worker: str | None
    created: float
    started: float | None
    finished: float | None
    error: str | None
    proposal: dict[str, Any]
    ask_seq: int
    tell_seq: int | None
    reused_from: int | None
    attempts: int

    @property
    def genotype(self) -> Genotype:
        return Genotype.from_json(self.genotype_json)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``nasnet show --json``)."""
        return {
            "id": self.id,
            "hash": self.hash,
            "status": self.status,
            "reward": self.reward,
            "val_accuracy": self.metrics.get("val_accuracy"),
            "test_accuracy": self.metrics.get("test_accuracy"),
            "params": self.params,
            "mult_adds": self.mult_adds,
            "seed": self.seed,
            "worker": self.worker,
            "error": self.error,
            "reused_from": self.reused_from,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "genotype": json.loads(self.genotype_json),
        }


_COLUMNS = (
    "id, genotype, hash, status, reward, metrics, params, mult_adds, seed, worker, created, "
    "started, finished, error, proposal, ask_seq, tell_seq, reused_from, attempts"
)


def _record(row: tuple) -> TrialRecord:
    values = list(row)
    values[5] = json.loads(values[5]) if values[5] else {}
    values[14] = json.loads(values[14])
    return TrialRecord(*values)


def _configure(conn: sqlite3.Connection) -> None:
    """WAL journal; commits survive a killed process without an fsync each (NORMAL)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def db_path(directory: str) -> str:
    return os.path.join(directory, DB_NAME)


class Store:
    """Access to one experiment's database; use :meth:`open` or :meth:`create`."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def exists(cls, directory: str) -> bool:
        return os.path.exists(db_path(directory))

    @classmethod
    def open(cls, directory: str, readonly: bool = False) -> Store:
        """Open an existing experiment (read-only for ``show`` / ``export`` / ``report``)."""
        path = db_path(directory)
        if not os.path.exists(path):
            raise StoreError(f"{directory}: no {DB_NAME} here; is it a 'nasnet search' output?")
        try:
            if readonly:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            else:
                conn = sqlite3.connect(path, timeout=30)
            store = cls(conn, path)
            store._check_version()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{path}: not a nasnet experiment database ({err})") from None
        if not readonly:
            _configure(conn)
        return store

    @classmethod
    def create(cls, directory: str, config: dict[str, Any]) -> Store:
        """Create ``DIR/experiment.db`` holding ``config``."""
        os.makedirs(directory, exist_ok=True)
        path = db_path(directory)
        if os.path.exists(path):
            raise StoreError(f"{path} already exists")
        conn = sqlite3.connect(path, timeout=30)
        _configure(conn)
        with conn:
            conn.executescript(_SCHEMA)
            conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            conn.execute(
                "INSERT INTO config VALUES (1, ?, ?)",
                (json.dumps(config, sort_keys=True), time.time()),
            )
        return cls(conn, path)

    def _check_version(self) -> None:
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no schema version recorded")
        if row[0] > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {row[0]}, newer than this nasnet's "
                f"{SCHEMA_VERSION}; upgrade nasnet to read it"
            )

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes so that they commit together (or not at all)."""
        with self.conn:
            yield self.conn

    # -- config -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return json.loads(self.conn.execute("SELECT json FROM config WHERE id = 1").fetchone()[0])

    def set_config(self, config: dict[str, Any]) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE config SET json = ? WHERE id = 1", (json.dumps(config, sort_keys=True),)
            )

    # -- trials -------------------------------------------------------------------------------

    def next_trial_id(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM trials").fetchone()[0])

    def next_seq(self) -> int:
        row = self.conn.execute(
            "SELECT MAX(COALESCE(MAX(ask_seq), 0), COALESCE(MAX(tell_seq), 0)) FROM trials"
        ).fetchone()
        state = self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM strategy_states").fetchone()
        return max(int(row[0] or 0), int(state[0])) + 1

    def add_trial(
        self,
        trial_id: int,
        genotype: Genotype,
        proposal: dict[str, Any],
        seed: int,
        ask_seq: int,
        genotype_hash: str | None = None,
    ) -> None:
        """Insert a queued trial (inside the caller's transaction, if any)."""
        self.conn.execute(
            "INSERT INTO trials (id, genotype, hash, status, seed, created, proposal, ask_seq) "
            "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
            (
                trial_id,
                json.dumps(genotype.to_dict(), sort_keys=True),
                genotype_hash or genotype.canonical_hash(),
                seed,
                time.time(),
                json.dumps(proposal),
                ask_seq,
            ),
        )

    def mark_running(self, trial_id: int) -> None:
        self.conn.execute(
            "UPDATE trials SET status = 'running', started = ?, attempts = attempts + 1 "
            "WHERE id = ?",
            (time.time(), trial_id),
        )

    def requeue(self, trial_id: int) -> None:
        """Mark an unfinished trial as waiting to be run (not running)."""
        self.conn.execute(
            "UPDATE trials SET status = 'queued' WHERE id = ? AND status IN ('queued', 'running')",
            (trial_id,),
        )

    def finish_trial(
        self,
        trial_id: int,
        status: str,
        reward: float | None,
        metrics: dict[str, Any],
        error: str | None,
        tell_seq: int,
        worker: str | None,
        started: float | None = None,
        finished: float | None = None,
        reused_from: int | None = None,
    ) -> None:
        """Record a trial's result (``done`` or ``failed``)."""
        if status not in ("done", "failed"):
            raise ValueError(f"status must be done or failed, got {status!r}")
        self.conn.execute(
            "UPDATE trials SET status = ?, reward = ?, metrics = ?, params = ?, mult_adds = ?, "
            "error = ?, tell_seq = ?, worker = ?, started = COALESCE(?, started), finished = ?, "
            "reused_from = ? WHERE id = ?",
            (
                status,
                reward,
                json.dumps(metrics),
                metrics.get("params"),
                metrics.get("mult_adds"),
                error,
                tell_seq,
                worker,
                started,
                finished if finished is not None else time.time(),
                reused_from,
                trial_id,
            ),
        )

    def trial(self, trial_id: int) -> TrialRecord | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trials WHERE id = ?", (trial_id,)
        ).fetchone()
        return _record(row) if row else None

    def trials(self, status: str | None = None) -> list[TrialRecord]:
        """All trials (or those with ``status``), by id."""
        if status is None:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM trials ORDER BY id")
        else:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM trials WHERE status = ? ORDER BY id", (status,)
            )
        return [_record(row) for row in rows]

    def done_by_hash(self, genotype_hash: str) -> TrialRecord | None:
        """The first trained (not reused) done trial with this canonical hash."""
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trials WHERE hash = ? AND status = 'done' "
            "ORDER BY reused_from IS NOT NULL, id LIMIT 1",
            (genotype_hash,),
        ).fetchone()
        return _record(row) if row else None

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM trials GROUP BY status"):
            counts[status] = n
        return counts

    def events_after(self, seq: int) -> list[tuple[int, str, TrialRecord]]:
        """``(seq, "ask" | "tell", trial)`` for every event after ``seq``, in order."""
        events: list[tuple[int, str, TrialRecord]] = []
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trials WHERE ask_seq > ? OR tell_seq > ?", (seq, seq)
        )
        for row in rows:
            record = _record(row)
            if record.ask_seq > seq:
                events.append((record.ask_seq, "ask", record))
            if record.tell_seq is not None and record.tell_seq > seq:
                events.append((record.tell_seq, "tell", record))
        events.sort(key=lambda event: event[0])
        return events

    # -- strategy states ----------------------------------------------------------------------

    def save_state(self, seq: int, told: int, blob: bytes, keep: int = KEEP_STATES) -> int:
        """Store a strategy state (inside the caller's transaction, if any); returns its id."""
        cursor = self.conn.execute(
            "INSERT INTO strategy_states (seq, told, created, state) VALUES (?, ?, ?, ?)",
            (seq, told, time.time(), sqlite3.Binary(blob)),
        )
        self.conn.execute(
            "DELETE FROM strategy_states WHERE id NOT IN "
            "(SELECT id FROM strategy_states ORDER BY id DESC LIMIT ?)",
            (keep,),
        )
        return int(cursor.lastrowid)

    def last_state(self) -> tuple[int, int, bytes] | None:
        """``(state id, seq, blob)`` of the newest saved strategy state."""
        row = self.conn.execute(
            "SELECT id, seq, state FROM strategy_states ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return (int(row[0]), int(row[1]), bytes(row[2])) if row else None

    def states(self) -> list[tuple[int, int, bytes]]:
        rows = self.conn.execute("SELECT id, seq, state FROM strategy_states ORDER BY id")
        return [(int(r[0]), int(r[1]), bytes(r[2])) for r in rows]

    def record_resume(self, state_id: int | None, digest: str | None, replayed: int) -> None:
        with self.conn:
            self.conn.execute(
                "INSERT INTO resumes (time, state_id, state_digest, replayed) VALUES (?, ?, ?, ?)",
                (time.time(), state_id, digest, replayed),
            )

    def resumes(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, time, state_id, state_digest, replayed FROM resumes ORDER BY id"
        )
        keys = ("id", "time", "state_id", "state_digest", "replayed")
        return [dict(zip(keys, row, strict=True)) for row in rows]


__all__ = ["DB_NAME", "KEEP_STATES", "SCHEMA_VERSION", "Store", "StoreError", "TrialRecord"]
