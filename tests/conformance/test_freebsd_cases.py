"""Cases in the spirit of FreeBSD's own kqueue tests (tests/sys/kqueue/libkqueue): the same
scenarios, through this API, on every backend."""

from __future__ import annotations

import errno
import time

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_DISPATCH,
    KQ_EV_ENABLE,
    KQ_EV_ONESHOT,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_NOTE_FFCOPY,
    KQ_NOTE_FFOR,
    KQ_NOTE_TRIGGER,
    kevent,
)
from tests.conftest import wait_events


def timer(ident: int, flags: int, period_ms: int = 1) -> kevent:
    return kevent(ident, KQ_FILTER_TIMER, flags, 0, period_ms)


def _spin(seconds: float) -> None:
    """Let wall time pass (timers must expire meanwhile); not a synchronisation."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_timer_disable_and_enable_keeps_counting(kq) -> None:
    kq.control([timer(1, KQ_EV_ADD | KQ_EV_DISABLE)], 0)
    _spin(0.03)
    assert kq.control(None, 1, 0) == []
    kq.control([timer(1, KQ_EV_ENABLE)], 0)
    ev = wait_events(kq)[0]
    assert ev.data >= 10, "expirations while disabled are counted, not lost"


def test_timer_dispatch_rearms_with_enable(kq) -> None:
    kq.control([timer(1, KQ_EV_ADD | KQ_EV_DISPATCH)], 0)
    assert wait_events(kq)[0].flags & KQ_EV_DISPATCH
    _spin(0.02)
    assert kq.control(None, 1, 0) == [], "dispatched: quiet until EV_ENABLE"
    kq.control([timer(1, KQ_EV_ENABLE)], 0)
    assert wait_events(kq)[0].data >= 1


def test_timer_oneshot_zero_fires_at_once(kq) -> None:
    kq.control([timer(1, KQ_EV_ADD | KQ_EV_ONESHOT, 0)], 0)
    assert wait_events(kq, bound=1)[0].data == 1


def test_timer_delete_while_pending(kq) -> None:
    kq.control([timer(1, KQ_EV_ADD)], 0)
    _spin(0.01)
    kq.control([timer(1, KQ_EV_DELETE)], 0)
    assert kq.control(None, 1, 0) == []


def test_user_disable_and_enable(kq) -> None:
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_DISABLE)], 0)
    kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    assert kq.control(None, 1, 0) == []
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ENABLE)], 0)
    assert len(wait_events(kq)) == 1


def test_user_oneshot_is_deleted_after_delivery(kq) -> None:
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_ONESHOT)], 0)
    kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    assert wait_events(kq)[0].flags & KQ_EV_ONESHOT
    err = kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_DELETE)], 1, 0)[0]
    assert err.data == errno.ENOENT


def test_user_fflags_accumulate_between_triggers(kq) -> None:
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_FFCOPY | 0x1)], 0)
    kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_FFOR | 0x2)], 0)
    kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER | KQ_NOTE_FFOR | 0x4)], 0)
    assert wait_events(kq)[0].fflags == 0x7


def test_delete_a_disabled_knote(kq) -> None:
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_DISABLE)], 0)
    assert kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_DELETE)], 1, 0) == []
    assert kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_many_changes_in_one_call_apply_in_order(kq) -> None:
    changes = [
        kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"a"),
        kevent(1, KQ_FILTER_USER, KQ_EV_ADD, udata=b"b"),
        kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER, udata=b"c"),
    ]
    assert [ev.udata for ev in kq.control(changes, 4, 0)] == [b"c"]


def test_close_with_events_pending(backend) -> None:
    kq = backend.kqueue()
    kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(10)], 0)
    kq.close()
    assert kq.closed
