"""EVFILT_VNODE memory is bounded by the number of knotes, whatever the event rate.

The shared inotify descriptor is read by whichever kqueue is pumped; a queue nobody reads must
still hold one pending delivery per knote, not one per batch of events read for it.
"""

from __future__ import annotations

import contextlib
import tracemalloc

import pytest

from kqd.core import KQ_NOTE_EXTEND, KQ_NOTE_WRITE
from tests.conformance.test_vnode import make_file, notes, watching
from tests.conftest import wait_events

WRITES = 200_000
PUMP_EVERY = 4  # writes between two reads of the shared inotify queue by the other kqueue


def test_an_unread_queue_stays_bounded_while_another_pumps(backend, tmp_path) -> None:
    if not backend.local:
        pytest.skip("measures this process's memory")
    storm, other = str(tmp_path / "storm"), str(tmp_path / "other")
    make_file(storm)
    make_file(other)
    with (
        contextlib.closing(backend.kqueue()) as unread,
        contextlib.closing(backend.kqueue()) as pumped,
        watching(unread, backend) as watch_unread,
        watching(pumped, backend) as watch_pumped,
    ):
        watch_unread(storm, KQ_NOTE_WRITE)
        watch_pumped(other, KQ_NOTE_WRITE)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            with open(storm, "ab", buffering=0) as f:
                for i in range(WRITES):
                    f.write(b"x")
                    if i % PUMP_EVERY == 0:
                        assert pumped.control(None, 8, 0) == []
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 2 * 2**20, f"{grown} bytes held for one knote's pending events"
        make_file(other, b"flush")  # read after every write to storm: all of them were merged
        assert notes(pumped) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
        assert [ev.fflags for ev in wait_events(unread)] == [KQ_NOTE_WRITE | KQ_NOTE_EXTEND]
        assert unread.control(None, 8, 0.2) == []


def test_events_read_by_another_queue_are_merged(kq, backend, tmp_path) -> None:
    storm, other = str(tmp_path / "storm"), str(tmp_path / "other")
    make_file(storm)
    make_file(other)
    with (
        contextlib.closing(backend.kqueue()) as pumped,
        watching(kq, backend) as watch,
        watching(pumped, backend) as watch_pumped,
    ):
        watch(storm, KQ_NOTE_WRITE | KQ_NOTE_EXTEND)
        watch_pumped(other, KQ_NOTE_WRITE)
        with open(storm, "ab", buffering=0) as f:
            for i in range(1000):
                f.write(b"x")
                if i % 20 == 0:
                    assert pumped.control(None, 8, 0) == []
        make_file(other, b"flush")
        assert notes(pumped) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
        assert [ev.fflags for ev in wait_events(kq)] == [KQ_NOTE_WRITE | KQ_NOTE_EXTEND]
        assert kq.control(None, 8, 0.2) == []
