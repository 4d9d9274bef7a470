"""EVFILT_TIMER: units, periodic vs one-shot, NOTE_ABSTIME, restart on re-add, errors."""

from __future__ import annotations

import errno
import time

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_ONESHOT,
    KQ_FILTER_TIMER,
    KQ_NOTE_ABSTIME,
    KQ_NOTE_MSECONDS,
    KQ_NOTE_NSECONDS,
    KQ_NOTE_SECONDS,
    KQ_NOTE_USECONDS,
    kevent,
)
from tests.conftest import wait_events


def timer(
    ident: int, period: int, fflags: int = 0, flags: int = KQ_EV_ADD, udata: bytes = b""
) -> kevent:
    return kevent(ident, KQ_FILTER_TIMER, flags, fflags, period, udata)


@pytest.mark.parametrize(
    ("fflags", "period"),
    [
        (0, 5),
        (KQ_NOTE_MSECONDS, 5),
        (KQ_NOTE_USECONDS, 5000),
        (KQ_NOTE_NSECONDS, 5_000_000),
        (KQ_NOTE_SECONDS, 0),
    ],
)
def test_units(kq, fflags: int, period: int) -> None:
    kq.control([timer(1, period, fflags, KQ_EV_ADD | KQ_EV_ONESHOT, b"t")], 0)
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.filter, ev.data, ev.udata) == (1, KQ_FILTER_TIMER, 1, b"t")


def test_periodic_timer_counts_expirations(kq) -> None:
    kq.control([timer(1, 1)], 0)
    first = wait_events(kq)[0]
    assert first.flags & KQ_EV_CLEAR, "relative timers are EV_CLEAR automatically"
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:  # let expirations pile up: data counts them
        pass
    assert wait_events(kq)[0].data >= 10


def test_oneshot_fires_once(kq) -> None:
    kq.control([timer(1, 1, flags=KQ_EV_ADD | KQ_EV_ONESHOT)], 0)
    assert wait_events(kq)[0].data == 1
    assert kq.control(None, 4, 0.05) == []
    assert kq.control([timer(1, 0, flags=KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_abstime_in_the_past_fires_at_once_and_once_with_oneshot(kq) -> None:
    past = int(time.time()) - 10
    kq.control([timer(1, past, KQ_NOTE_SECONDS | KQ_NOTE_ABSTIME, KQ_EV_ADD | KQ_EV_ONESHOT)], 0)
    assert wait_events(kq, bound=1)[0].data == 1
    assert kq.control(None, 4, 0.05) == []


def test_abstime_in_the_future(kq) -> None:
    when_ms = int(time.time() * 1000) + 30
    kq.control([timer(1, when_ms, KQ_NOTE_MSECONDS | KQ_NOTE_ABSTIME)], 0)
    ev = wait_events(kq)[0]
    assert ev.data == 1 and time.time() * 1000 >= when_ms - 1


def test_abstime_timers_are_not_ev_clear(kq) -> None:
    """filt_timerattach sets EV_CLEAR for relative timers only: an expired absolute timer is
    level-triggered, reported at every call until deleted (or asked for with EV_CLEAR)."""
    past = int(time.time()) - 10
    kq.control([timer(1, past, KQ_NOTE_SECONDS | KQ_NOTE_ABSTIME, udata=b"abs")], 0)
    ev = wait_events(kq, bound=1)[0]
    assert (ev.flags & KQ_EV_CLEAR, ev.data, ev.udata) == (0, 1, b"abs")
    again = kq.control(None, 4, 0)
    assert [(e.ident, e.flags & KQ_EV_CLEAR, e.data) for e in again] == [(1, 0, 1)]
    kq.control([timer(1, 0, flags=KQ_EV_DELETE)], 0)
    assert kq.control(None, 4, 0) == []


def test_abstime_with_ev_clear_fires_once(kq) -> None:
    past = int(time.time()) - 10
    kq.control([timer(1, past, KQ_NOTE_SECONDS | KQ_NOTE_ABSTIME, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    assert wait_events(kq, bound=1)[0].flags & KQ_EV_CLEAR
    assert kq.control(None, 4, 0.05) == []


def test_relative_timers_get_ev_clear(kq) -> None:
    kq.control([timer(1, 1), timer(2, 1, flags=KQ_EV_ADD | KQ_EV_ONESHOT)], 0)
    events: list[kevent] = []
    while not {1, 2} <= {ev.ident for ev in events}:
        events += wait_events(kq)
    assert all(ev.flags & KQ_EV_CLEAR for ev in events), events


def test_re_add_restarts_and_forgets_expirations(kq) -> None:
    kq.control([timer(1, 1, udata=b"fast")], 0)
    wait_events(kq)
    kq.control([timer(1, 3600, KQ_NOTE_SECONDS, udata=b"slow")], 0)
    assert kq.control(None, 4, 0.05) == [], "pending expirations were not forgotten"


def test_negative_period_is_einval(kq) -> None:
    assert kq.control([timer(1, -1)], 1, 0)[0].data == errno.EINVAL


def test_unknown_or_conflicting_units_are_einval(kq) -> None:
    assert kq.control([timer(1, 1, 0x100)], 1, 0)[0].data == errno.EINVAL
    assert (
        kq.control([timer(2, 1, KQ_NOTE_SECONDS | KQ_NOTE_USECONDS)], 1, 0)[0].data == errno.EINVAL
    )


def test_many_timers_need_no_descriptor_each(kq, backend) -> None:
    if not backend.local:
        pytest.skip("counts this process's descriptors")
    import os

    before = len(os.listdir("/proc/self/fd"))
    kq.control([timer(i, 3600, KQ_NOTE_SECONDS) for i in range(1000)], 0)
    assert len(os.listdir("/proc/self/fd")) - before < 5
