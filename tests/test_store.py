"""The experiment store: schema version, trials, events, strategy states."""

from __future__ import annotations

import json
import sqlite3

import pytest

from nasnet.genotypes import NASNET_A, NASNET_A_FIGURE
from nasnet.space import Block, Cell, Genotype
from nasnet.store import DB_NAME, SCHEMA_VERSION, Store, StoreError
from nasnet.trials import TrialOutcome


def _swapped(genotype: Genotype) -> Genotype:
    """The same genotype with the operands of every block swapped (equivalent)."""

    def swap(cell: Cell) -> Cell:
        blocks = tuple(Block(b.input_2, b.input_1, b.op_2, b.op_1, b.combine) for b in cell.blocks)
        return Cell(blocks, cell.concat)

    return Genotype(swap(genotype.normal), swap(genotype.reduction))


def _add(store: Store, trial_id: int, genotype: Genotype, seq: int) -> None:
    with store.transaction():
        store.add_trial(trial_id, genotype, {"id": trial_id, "data": {}}, 100 + trial_id, seq)


def test_create_open_config_and_wal(tmp_path) -> None:
    store = Store.create(str(tmp_path / "exp"), {"strategy": "ppo", "budget": 3})
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    assert (tmp_path / "exp" / DB_NAME).exists()
    store = Store.open(str(tmp_path / "exp"))
    assert store.config() == {"strategy": "ppo", "budget": 3}
    store.set_config({"strategy": "ppo", "budget": 5})
    assert store.config()["budget"] == 5
    with pytest.raises(StoreError, match="already exists"):
        Store.create(str(tmp_path / "exp"), {})


def test_trial_life_cycle_and_counts(tmp_path) -> None:
    store = Store.create(str(tmp_path), {})
    assert store.next_trial_id() == 1 and store.next_seq() == 1
    _add(store, 1, NASNET_A, 1)
    with store.transaction():
        store.mark_running(1)
    _add(store, 2, NASNET_A_FIGURE, 2)
    metrics = {"val_accuracy": 0.75, "params": 1234, "mult_adds": 99}
    with store.transaction():
        store.finish_trial(1, TrialOutcome.done(0.75, metrics), 3, "local:1")
    record = store.trial(1)
    assert record is not None
    assert (record.status, record.reward, record.params, record.mult_adds) == (
        "done",
        0.75,
        1234,
        99,
    )
    assert record.genotype == NASNET_A and record.hash == NASNET_A.canonical_hash()
    assert record.attempts == 1 and record.seed == 101 and record.tell_seq == 3
    assert store.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 0}
    assert store.next_trial_id() == 3 and store.next_seq() == 4
    with pytest.raises(sqlite3.IntegrityError):
        _add(store, 1, NASNET_A, 9)  # an id is never reused


def test_done_by_hash_finds_equivalent_cells(tmp_path) -> None:
    store = Store.create(str(tmp_path), {})
    _add(store, 1, NASNET_A, 1)
    assert store.done_by_hash(NASNET_A.canonical_hash()) is None  # not done yet
    with store.transaction():
        store.finish_trial(1, TrialOutcome.done(0.5), 2, "w")
    found = store.done_by_hash(_swapped(NASNET_A).canonical_hash())
    assert found is not None and found.id == 1


def test_events_after_interleave_asks_and_tells(tmp_path) -> None:
    store = Store.create(str(tmp_path), {})
    _add(store, 1, NASNET_A, 1)
    _add(store, 2, NASNET_A_FIGURE, 2)
    with store.transaction():
        store.finish_trial(2, TrialOutcome.failed("boom"), 3, "w")
        store.finish_trial(1, TrialOutcome.done(0.1), 4, "w")
    _add(store, 3, NASNET_A, 5)
    events = [(seq, kind, trial.id) for seq, kind, trial in store.events_after(2)]
    assert events == [(3, "tell", 2), (4, "tell", 1), (5, "ask", 3)]
    assert store.trial(2).error == "boom"


def test_strategy_states_keep_the_newest(tmp_path) -> None:
    store = Store.create(str(tmp_path), {})
    assert store.last_state() is None
    with store.transaction():
        for seq in range(1, 8):
            store.save_state(seq, seq, bytes([seq]), keep=3)
    assert [(seq, blob) for _, seq, blob in store.states()] == [
        (5, b"\x05"),
        (6, b"\x06"),
        (7, b"\x07"),
    ]
    state_id, seq, blob = store.last_state()
    assert (seq, blob) == (7, b"\x07") and state_id == 7
    assert store.next_seq() == 8


def test_newer_schema_is_refused_in_one_line(tmp_path) -> None:
    Store.create(str(tmp_path), {}).close()
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    for readonly in (False, True):
        with pytest.raises(StoreError) as info:
            Store.open(str(tmp_path), readonly=readonly)
        message = str(info.value)
        assert "\n" not in message and f"schema version {SCHEMA_VERSION + 1}" in message


def test_missing_and_corrupt_stores(tmp_path) -> None:
    with pytest.raises(StoreError, match=r"no experiment\.db"):
        Store.open(str(tmp_path / "nothing"))
    (tmp_path / DB_NAME).write_text("this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a nasnet experiment"):
        Store.open(str(tmp_path))


def test_a_store_that_cannot_be_written_is_refused_in_one_line(tmp_path) -> None:
    Store.create(str(tmp_path), {"a": 1}).close()
    (tmp_path / f"{DB_NAME}-shm").mkdir()  # SQLite falls back to reading the file only
    with pytest.raises(
        StoreError, match=r"cannot be written \(attempt to write a readonly"
    ) as info:
        Store.open(str(tmp_path))
    assert "\n" not in str(info.value)


def test_a_damaged_page_is_named_in_one_line(tmp_path) -> None:
    store = Store.create(str(tmp_path), {"a": 1})
    for trial_id in range(1, 41):
        _add(store, trial_id, NASNET_A, trial_id)
    store.close()
    with open(tmp_path / DB_NAME, "r+b") as f:  # scribble over the middle of a trials page
        f.seek(4 * 4096 + 100)
        f.write(bytes(range(256)) * 12)
    with pytest.raises(StoreError, match="the database is damaged") as info:
        Store.open(str(tmp_path), readonly=True)
    assert "\n" not in str(info.value) and "***" not in str(info.value)


def test_show_counts_the_running_trials_of_a_killed_driver_as_queued(tmp_path) -> None:
    from nasnet.lock import ExperimentLock
    from nasnet.results import summarize

    store = Store.create(str(tmp_path), {"budget": 3})
    _add(store, 1, NASNET_A, 1)
    with store.transaction():
        store.mark_running(1)
    store.close()
    summary = summarize(str(tmp_path))  # no driver holds the experiment: it was killed
    assert (summary["running"], summary["queued"]) == (0, 1)
    with ExperimentLock(str(tmp_path)):  # a live driver
        summary = summarize(str(tmp_path))
    assert (summary["running"], summary["queued"]) == (1, 0)


def test_hand_edited_trial_rows_are_named_in_one_line(tmp_path) -> None:
    from nasnet.results import summarize

    store = Store.create(str(tmp_path), {"budget": 2})
    for trial_id, genotype in ((1, NASNET_A), (2, NASNET_A_FIGURE)):
        _add(store, trial_id, genotype, trial_id)
        with store.transaction():
            store.finish_trial(trial_id, TrialOutcome.done(0.5, {}), 10 + trial_id, "w")
    store.conn.execute("UPDATE trials SET reward = 'abc' WHERE id = 2")
    store.conn.commit()
    with pytest.raises(StoreError, match=r"trial 2 is damaged \(reward 'abc' is not a number\)"):
        store.trials()
    store.conn.execute("UPDATE trials SET reward = 0.5, genotype = '{}' WHERE id = 2")
    store.conn.commit()
    store.close()
    with pytest.raises(StoreError, match=r"trial 2's genotype is damaged \(normal: missing"):
        summarize(str(tmp_path))  # the leaderboard it shows


def test_a_log_left_unread_on_read_only_media_is_named(tmp_path, monkeypatch) -> None:
    import nasnet.store

    Store.create(str(tmp_path), {"a": 1}).close()
    (tmp_path / f"{DB_NAME}-wal").write_bytes(b"results of a killed driver")
    connect = sqlite3.connect

    def read_only_media(target, *args, **kwargs):  # only the file as it is can be read
        if not str(target).endswith("immutable=1"):
            raise sqlite3.OperationalError("attempt to write a readonly database")
        return connect(target, *args, **kwargs)

    monkeypatch.setattr(nasnet.store.sqlite3, "connect", read_only_media)
    with pytest.warns(UserWarning, match=r"experiment\.db-wal holds results not yet in"):
        Store.open(str(tmp_path), readonly=True).close()


def test_readonly_store_cannot_write(tmp_path) -> None:
    Store.create(str(tmp_path), {"a": 1}).close()
    store = Store.open(str(tmp_path), readonly=True)
    assert store.config() == {"a": 1}
    with pytest.raises(sqlite3.OperationalError):
        _add(store, 1, NASNET_A, 1)


def test_a_full_disk_is_a_one_line_store_error_and_the_store_keeps_what_it_had(tmp_path):
    store = Store.create(str(tmp_path / "exp"), {"budget": 3})
    _add(store, 1, NASNET_A, 1)
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
    path = str(tmp_path / "exp" / DB_NAME)
    with pytest.raises(StoreError) as caught, store.transaction():
        for trial_id in range(2, 200):
            store.add_trial(trial_id, NASNET_A, {"padding": "x" * 10_000}, trial_id, trial_id)
    assert str(caught.value) == (
        f"{path}: cannot write (database or disk is full); free some disk space and run again"
    )
    assert [t.id for t in store.trials()] == [1]
    store.close()


def test_trial_summary_is_json(tmp_path) -> None:
    store = Store.create(str(tmp_path), {})
    _add(store, 1, NASNET_A, 1)
    summary = store.trial(1).summary()
    assert json.loads(json.dumps(summary))["genotype"] == NASNET_A.to_dict()
    assert {"id", "hash", "status", "reward"} <= set(summary)
