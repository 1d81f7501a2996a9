"""The experiment store: one SQLite file per search, ``DIR/experiment.db``.

Invariants:

* Only the search driver writes it, and only one driver at a time (it holds the experiment's
  lock, :mod:`nasnet.lock`); ``nasnet show`` / ``export`` / ``report`` read it while it runs
  (WAL mode).
* Results are told to the strategy in the order the trials were asked. One that has to wait
  for an older trial is stored when it arrives (``done`` or ``failed`` with no
  ``tell_seq``). A tell number, the result if not stored yet, and the strategy state that
  follows commit in one transaction, so the store never holds a tell the strategy did not
  see, or the reverse.
* The main file holds everything up to the last saved strategy state: the write-ahead log is
  checkpointed into it whenever a strategy state is saved and when the driver closes the store.
  Trials finished after the last saved state live in the WAL (``experiment.db-wal``) until
  then: losing that file loses them (they are re-run on resume), never anything older.
* Only the newest :data:`KEEP_STATES` strategy states are kept (resume needs the last), so the
  file grows with the number of trials only.

Tables:

* ``schema_version(version)`` - one row; a file written by a newer nasnet is refused, an older
  one is upgraded when a driver opens it.
* ``config(id = 1, json, created)`` - the experiment's options
  (:class:`~nasnet.search_config.SearchConfig`).
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

import contextlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nasnet.space import Genotype, GenotypeError
from nasnet.trials import TrialOutcome, TrialStatus

#: Version of the layout below; bump it (and migrate in :meth:`Store._upgrade`) when it changes.
#: 2: nested config layout (nasnet 0.2), canonical hash v2.
SCHEMA_VERSION = 2

#: File name of the store inside an experiment directory.
DB_NAME = "experiment.db"

#: Strategy states kept (older ones are deleted; resume needs the newest).
KEEP_STATES = 2

STATUSES = tuple(status.value for status in TrialStatus)

REQUIRED_TABLES = frozenset({"schema_version", "config", "trials", "strategy_states", "resumes"})

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
    """The experiment store cannot be used (missing, newer schema, not a database, a full
    disk)."""


@contextmanager
def _writing(path: str) -> Iterator[None]:
    """A full disk (or another write failure SQLite reports) as a :class:`StoreError` naming
    the file; SQLite rolls the transaction back, so the store keeps what it had."""
    try:
        yield
    except sqlite3.OperationalError as err:
        full = getattr(err, "sqlite_errorcode", None) == 13 or "disk is full" in str(err)
        if not full and "disk I/O error" not in str(err):
            raise
        fix = "free some disk space and run again" if full else "check the disk and run again"
        raise StoreError(f"{path}: cannot write ({err}); {fix}") from None


@dataclass
class TrialRecord:
    """One row of ``trials``."""

    id: int
    genotype_json: str
    hash: str
    status: TrialStatus
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
        try:
            return Genotype.from_json(self.genotype_json)
        except GenotypeError as err:
            raise StoreError(
                f"trial {self.id}'s genotype is damaged ({err}); restore the experiment from a "
                "copy or start a new one"
            ) from None

    def genotype_dict(self) -> dict[str, Any]:
        return json.loads(self.genotype_json)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (for ``nasnet show --json``); never a test accuracy."""
        return {
            "id": self.id,
            "hash": self.hash,
            "status": self.status.value,
            "reward": self.reward,
            "val_accuracy": self.metrics.get("val_accuracy"),
            "stopped_early": bool(self.metrics.get("stopped_early")),
            "epochs_done": self.metrics.get("epochs_done"),
            "params": self.params,
            "mult_adds": self.mult_adds,
            "seed": self.seed,
            "worker": self.worker,
            "error": self.error,
            "reused_from": self.reused_from,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "genotype": self.genotype_dict(),
        }


_COLUMNS = (
    "id, genotype, hash, status, reward, metrics, params, mult_adds, seed, worker, created, "
    "started, finished, error, proposal, ask_seq, tell_seq, reused_from, attempts"
)


def _record(row: tuple) -> TrialRecord:
    values = list(row)
    try:
        values[3] = TrialStatus(values[3])
        values[5] = json.loads(values[5]) if values[5] else {}
        values[14] = json.loads(values[14])
        if not all(isinstance(v, dict) for v in (values[5], values[14], json.loads(values[1]))):
            raise ValueError("genotype, metrics and proposal must be JSON objects")
        reward = values[4]
        if reward is not None and (
            isinstance(reward, bool) or not isinstance(reward, (int, float))
        ):
            raise ValueError(f"reward {reward!r} is not a number")
    except (ValueError, TypeError) as err:
        raise StoreError(f"trial {values[0]} is damaged ({err}); restore the experiment "
                         "from a copy or start a new one") from None  # fmt: skip
    return TrialRecord(*values)


def _configure(conn: sqlite3.Connection) -> None:
    """WAL journal; commits survive a killed process without an fsync each (NORMAL)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")


def _connect_readonly(path: str) -> sqlite3.Connection:
    """A connection that never writes the experiment: read-only mode; where the log of a
    crashed driver needs recovering first, a query-only connection (which may recover it);
    on read-only media, the file as it is (a store closed by its driver holds everything)."""
    attempts = (
        (f"file:{path}?mode=ro", True, False),
        (path, False, True),
        (f"file:{path}?immutable=1", True, False),
    )
    error: sqlite3.Error | None = None
    for target, uri, query_only in attempts:
        try:
            conn = sqlite3.connect(target, uri=uri, timeout=30)
            if query_only:
                conn.execute("PRAGMA query_only = 1")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            if target.endswith("immutable=1"):
                _warn_if_log_unread(path)
            return conn
        except sqlite3.OperationalError as err:
            error = err
    assert error is not None
    raise error


def _warn_if_log_unread(path: str) -> None:
    """The file read as it is leaves out a write-ahead log that holds something: say so."""
    with contextlib.suppress(OSError):
        if os.path.getsize(f"{path}-wal") > 0:
            warnings.warn(
                f"{path}-wal holds results not yet in {DB_NAME}, which cannot be read where "
                "nothing can be written; copy the folder to writable storage to see them",
                stacklevel=3,
            )


def db_path(directory: str) -> str:
    return os.path.join(directory, DB_NAME)


class Store:
    """Access to one experiment's database; use :meth:`open` or :meth:`create`."""

    def __init__(self, conn: sqlite3.Connection, path: str, readonly: bool = False) -> None:
        self.conn = conn
        self.path = path
        self.readonly = readonly

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
        conn = None
        try:
            conn = _connect_readonly(path) if readonly else sqlite3.connect(path, timeout=30)
            store = cls(conn, path, readonly)
            store._check_integrity()
            version = store._check_version()
            if not readonly:
                _configure(conn)
                store._upgrade(version)
                store._check_writable()
        except (sqlite3.DatabaseError, StoreError) as err:
            if conn is not None:
                conn.close()
            if isinstance(err, StoreError):
                raise
            if isinstance(err, sqlite3.OperationalError):  # locked, unreadable, a folder
                raise StoreError(
                    f"{path}: cannot be opened ({err}); check that it, {DB_NAME}-wal and "
                    f"{DB_NAME}-shm are files you can read and write"
                ) from None
            raise StoreError(f"{path}: not a nasnet experiment database ({err})") from None
        return store

    def _check_writable(self) -> None:
        """Refuse a store that can be read but not written before anything is done."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE schema_version SET version = version")
        except sqlite3.OperationalError as err:
            raise StoreError(
                f"{self.path}: cannot be written ({err}); make it, its folder and its -wal and "
                "-shm files writable, or copy the experiment to a folder you can write"
            ) from None
        finally:
            self.conn.rollback()

    @classmethod
    def create(cls, directory: str, config: dict[str, Any]) -> Store:
        """Create ``DIR/experiment.db`` holding ``config``. The file is built under a temporary
        name and renamed, so a reader sees either no store or a complete one; a full disk is
        a :class:`StoreError` and leaves no file."""
        os.makedirs(directory, exist_ok=True)
        path = db_path(directory)
        if os.path.exists(path):
            raise StoreError(f"{path} already exists")
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with _writing(path):
                conn = sqlite3.connect(tmp, timeout=30)
                try:  # a rollback journal here: a full disk fails the commit, not a checkpoint
                    with conn:
                        conn.executescript(_SCHEMA)
                        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                        conn.execute(
                            "INSERT INTO config VALUES (1, ?, ?)",
                            (json.dumps(config, sort_keys=True), time.time()),
                        )
                finally:
                    conn.close()
                os.replace(tmp, path)
                conn = sqlite3.connect(path, timeout=30)
                try:
                    _configure(conn)
                except BaseException:  # the file is ours, seconds old: leave no half-store
                    conn.close()
                    os.remove(path)
                    raise
        finally:
            for leftover in (tmp, f"{tmp}-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)
        return cls(conn, path)

    def _check_integrity(self) -> None:
        """Refuse a damaged file up front (one line) rather than failing in mid-search."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:  # one report may hold several lines, under "*** in database"
            lines = [ln for p in problems for ln in p.splitlines() if not ln.startswith("***")]
            raise StoreError(
                f"{self.path}: the database is damaged ({lines[0] if lines else problems[0]}); "
                "restore it from a copy or start a new experiment"
            )
        names = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master")}
        missing = sorted(REQUIRED_TABLES - names)
        if missing:
            raise StoreError(
                f"{self.path}: table {missing[0]} is missing; this is not a complete nasnet "
                "experiment (restore it from a copy or start a new one)"
            )

    def _check_version(self) -> int:
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise StoreError(f"{self.path}: no schema version recorded")
        if row[0] > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {row[0]}, newer than this nasnet's "
                f"{SCHEMA_VERSION}; upgrade nasnet to read it"
            )
        return int(row[0])

    def _upgrade(self, version: int) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION` (in one transaction)."""
        if version >= SCHEMA_VERSION:
            return
        from nasnet.search_config import SearchConfig

        with self.conn:
            config = SearchConfig.from_dict(self.config()).to_dict()
            self.conn.execute("UPDATE config SET json = ? WHERE id = 1",
                              (json.dumps(config, sort_keys=True),))  # fmt: skip
            rows = self.conn.execute("SELECT id, genotype FROM trials").fetchall()
            for trial_id, genotype in rows:
                new_hash = Genotype.from_json(genotype).canonical_hash()
                self.conn.execute("UPDATE trials SET hash = ? WHERE id = ?", (new_hash, trial_id))
            self.conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Close the connection (a writer checkpoints the WAL into the main file first)."""
        if not self.readonly:
            self.checkpoint()
        self.conn.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the main database file (and empty the log)."""
        # a busy log (a reader in it) is left for the next checkpoint
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes so that they commit together (or not at all); a full disk is a
        :class:`StoreError`."""
        with _writing(self.path), self.conn:
            yield self.conn

    # -- config -------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        row = self.conn.execute("SELECT json FROM config WHERE id = 1").fetchone()
        if row is None:
            raise StoreError(
                f"{self.path}: the saved config is missing; restore the experiment from a copy"
            )
        try:
            config = json.loads(row[0])
            if not isinstance(config, dict):
                raise ValueError("not a JSON object")
        except (TypeError, ValueError) as err:
            raise StoreError(
                f"{self.path}: the saved config is damaged ({err}); restore the experiment "
                "from a copy"
            ) from None
        return config

    def set_config(self, config: dict[str, Any]) -> None:
        with self.transaction():
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
        outcome: TrialOutcome,
        tell_seq: int | None,
        worker: str | None,
        started: float | None = None,
        finished: float | None = None,
        reused_from: int | None = None,
    ) -> None:
        """Record a trial's outcome (inside the caller's transaction, if any); ``tell_seq``
        ``None`` until it is told (:meth:`mark_told`)."""
        metrics = outcome.metrics
        self.conn.execute(
            "UPDATE trials SET status = ?, reward = ?, metrics = ?, params = ?, mult_adds = ?, "
            "error = ?, tell_seq = ?, worker = ?, started = COALESCE(?, started), finished = ?, "
            "reused_from = ? WHERE id = ?",
            (
                outcome.status.value,
                outcome.reward,
                json.dumps(metrics),
                metrics.get("params"),
                metrics.get("mult_adds"),
                outcome.error,
                tell_seq,
                worker,
                started,
                finished if finished is not None else time.time(),
                reused_from,
                trial_id,
            ),
        )

    def mark_told(self, trial_id: int, tell_seq: int) -> None:
        """Record that a stored result was told (inside the caller's transaction, if any)."""
        self.conn.execute("UPDATE trials SET tell_seq = ? WHERE id = ?", (tell_seq, trial_id))

    def trial(self, trial_id: int) -> TrialRecord | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trials WHERE id = ?", (trial_id,)
        ).fetchone()
        return _record(row) if row else None

    def trials(self, status: TrialStatus | str | None = None) -> list[TrialRecord]:
        """All trials (or those with ``status``), by id."""
        if status is None:
            rows = self.conn.execute(f"SELECT {_COLUMNS} FROM trials ORDER BY id")
        else:
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM trials WHERE status = ? ORDER BY id",
                (TrialStatus(status).value,),
            )
        return [_record(row) for row in rows]

    def done_by_hash(self, genotype_hash: str) -> TrialRecord | None:
        """The first trained (not reused) done trial with this canonical hash, among those
        told (so that what a new trial reuses does not depend on which child finished first)."""
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM trials WHERE hash = ? AND status = 'done' "
            "AND tell_seq IS NOT NULL "
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
        with self.transaction():
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
