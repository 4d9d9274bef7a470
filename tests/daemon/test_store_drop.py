"""A forgotten queue's knote rows go a bounded number at a time (store.drop_knotes_of), and
those left when the daemon stopped meanwhile go at the store's next start: nothing loads them."""

from __future__ import annotations

from pathlib import Path

from kqd.core import KQ_EV_ADD, KQ_FILTER_USER, kevent
from kqd.core.linux.knote import KnoteSnapshot
from kqd.daemon.store import QueueRecord, StateStore


def _knotes(store: StateStore, key: str, count: int) -> None:
    snapshots = [
        KnoteSnapshot(kevent(i, KQ_FILTER_USER, KQ_EV_ADD), False, {}) for i in range(count)
    ]
    store.put_knotes(key, snapshots, 0)


def _rows(store: StateStore) -> int:
    return store._db.execute("SELECT count(*) FROM knotes").fetchone()[0]


def test_a_dropped_queue_loses_its_knotes_in_bounded_steps(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for key in ("gone", "kept"):
        store.put_queue(QueueRecord(key, "someone", None, 60.0, 0))
        _knotes(store, key, 1200)
    store.commit()
    store.drop_queue("gone")
    assert [record.key for record in store.load()] == ["kept"]  # gone at once for loading
    steps = []
    while deleted := store.drop_knotes_of("gone", 500):
        steps.append(deleted)
    assert steps == [500, 500, 200] and _rows(store) == 1200
    store.close()


def test_rows_of_a_drop_cut_short_go_at_the_next_start(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    for key in ("gone", "kept"):
        store.put_queue(QueueRecord(key, "someone", None, 60.0, 0))
        _knotes(store, key, 300)
    store.drop_queue("gone")
    assert store.drop_knotes_of("gone", 100) == 100
    store.close()  # the daemon stops with 200 of its rows left
    reopened = StateStore(tmp_path)
    assert _rows(reopened) == 300
    (record,) = reopened.load()
    assert record.key == "kept" and len(record.knotes) == 300
    reopened.close()
