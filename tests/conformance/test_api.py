"""The select.kqueue-shaped API: kevent records, control() argument rules, kqueue lifecycle."""

from __future__ import annotations

import errno
import math
import select
import socket
import threading

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_EV_FORCEONESHOT,
    KQ_EV_KEEPUDATA,
    KQ_EV_RECEIPT,
    KQ_FILTER_READ,
    KQ_FILTER_USER,
    KQ_NOTE_TRIGGER,
    kevent,
)
from tests.conftest import wait_events


def test_kevent_defaults_and_fields() -> None:
    ev = kevent(5)
    assert (ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata) == (
        5,
        KQ_FILTER_READ,
        KQ_EV_ADD,
        0,
        0,
        b"",
    )


def test_kevent_takes_ident_from_fileno() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert kevent(a).ident == a.fileno()


def test_kevent_compares_field_by_field() -> None:
    assert kevent(1, KQ_FILTER_USER, udata=b"x") == kevent(1, KQ_FILTER_USER, udata=b"x")
    assert kevent(1, KQ_FILTER_USER, udata=b"x") != kevent(1, KQ_FILTER_USER, udata=b"y")
    assert kevent(1) < kevent(2)
    with pytest.raises(TypeError):
        hash(kevent(1))


def test_kevent_repr_names_filter_and_flags() -> None:
    text = repr(kevent(3, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, 7, b"u"))
    assert "KQ_FILTER_USER" in text and "KQ_EV_ADD|KQ_EV_CLEAR" in text
    assert "KQ_NOTE_TRIGGER" in text and "data=7" in text and "b'u'" in text


def test_freebsd_12_flags_have_their_values_and_names() -> None:
    assert (KQ_EV_FORCEONESHOT, KQ_EV_KEEPUDATA) == (0x0100, 0x0200)
    text = repr(kevent(3, KQ_FILTER_USER, KQ_EV_FORCEONESHOT | KQ_EV_KEEPUDATA))
    assert "flags=KQ_EV_FORCEONESHOT|KQ_EV_KEEPUDATA" in text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ident": -1}, OverflowError),
        ({"ident": 2**64}, OverflowError),
        ({"ident": 1, "filter": 2**15}, OverflowError),
        ({"ident": 1, "flags": 2**16}, OverflowError),
        ({"ident": 1, "fflags": -1}, OverflowError),
        ({"ident": 1, "data": 2**63}, OverflowError),
        ({"ident": 1, "udata": 5}, TypeError),
        ({"ident": 1, "udata": "text"}, TypeError),
        ({"ident": "1"}, TypeError),
    ],
)
def test_kevent_rejects_bad_fields(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        kevent(**kwargs)
    assert "kevent" in str(info.value)


def test_kevent_udata_accepts_bytes_like() -> None:
    assert kevent(1, udata=bytearray(b"ab")).udata == b"ab"
    assert kevent(1, udata=memoryview(b"cd")).udata == b"cd"


def test_control_argument_rules(kq) -> None:
    with pytest.raises(TypeError):
        kq.control(5, 1, 0)
    with pytest.raises(TypeError):
        kq.control([object()], 1, 0)
    with pytest.raises(ValueError):
        kq.control(None, -1, 0)
    with pytest.raises(ValueError):
        kq.control(None, 1, -0.5)
    with pytest.raises(TypeError):
        kq.control(None, 1, "soon")
    assert kq.control(None, 0, None) == []  # max_events 0 never waits
    assert kq.control([], 4, 0) == []
    assert kq.control(iter([]), 4, 0.01) == []


def test_closed_kqueue(backend) -> None:
    kq = backend.kqueue()
    assert not kq.closed
    kq.close()
    kq.close()
    assert kq.closed
    with pytest.raises(ValueError):
        kq.control(None, 1, 0)


def test_context_manager(backend) -> None:
    with backend.kqueue() as kq:
        assert not kq.closed
    assert kq.closed


@pytest.mark.parametrize("timeout", [10, 30 * 86_400, 1e300, math.inf])
def test_change_in_one_thread_wakes_a_waiter_in_another(kq, timeout: float) -> None:
    """Also with timeouts beyond what epoll_wait or gRPC can express (30 days, inf)."""
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    got: list = []
    waiter = threading.Thread(target=lambda: got.extend(kq.control(None, 1, timeout)))
    waiter.start()
    kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    waiter.join(10)
    assert not waiter.is_alive(), "the blocked control() was not woken by the trigger"
    assert [ev.ident for ev in got] == [1]


def test_fileno_polls_readable_while_events_pend(backend) -> None:
    if not backend.local:
        pytest.skip("fileno() is a local descriptor")
    with backend.kqueue() as kq:
        poller = select.poll()
        poller.register(kq.fileno(), select.POLLIN)
        assert poller.poll(0) == []
        kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)], 0)
        assert poller.poll(10_000), "fileno() did not poll readable with an event pending"
        assert len(kq.control(None, 4, 0)) == 1
        assert poller.poll(0) == [], "fileno() still readable after the queue was drained"


def test_kqueue_watched_by_another_kqueue(backend) -> None:
    if not backend.local:
        pytest.skip("fileno() is a local descriptor")
    with backend.kqueue() as inner, backend.kqueue() as outer:
        outer.control([kevent(inner.fileno(), KQ_FILTER_READ, KQ_EV_ADD, udata=b"inner")], 0)
        assert outer.control(None, 4, 0) == []
        inner.control([kevent(9, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)
        ev = wait_events(outer)[0]
        assert (ev.ident, ev.udata, ev.data) == (inner.fileno(), b"inner", 1)
        kq_self = [kevent(outer.fileno(), KQ_FILTER_READ, KQ_EV_ADD)]
        err = outer.control(kq_self, 1, 0)[0]
        assert err.flags == KQ_EV_ERROR and err.data != 0


def test_eof_flag_is_output_only(kq) -> None:
    # EV_EOF and EV_ERROR given in a change are reserved system flags and are ignored.
    kq.control([kevent(4, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_EOF | KQ_EV_ERROR)], 0)
    kq.control([kevent(4, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    assert wait_events(kq)[0].flags == 0
    kq.control([kevent(4, KQ_FILTER_USER, KQ_EV_DELETE)], 0)


def test_forgotten_kqueue_releases_its_descriptors(backend) -> None:
    if not backend.local:
        pytest.skip("counts this process's descriptors")
    import gc
    import os

    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        kq = backend.kqueue()
        kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD)], 0)
        del kq
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) - before <= 1


def test_a_long_changelist_without_room_stops_at_its_first_error(kq) -> None:
    """kevent(2)'s rule, also when the daemon applies a long changelist in slices: with no room
    to report, the first failing change raises; the changes before it stay applied, the ones
    after it are not."""
    changes = [kevent(i, KQ_FILTER_USER, KQ_EV_ADD) for i in range(1000)]
    changes[700] = kevent(700, KQ_FILTER_USER, KQ_EV_DELETE)  # no such knote: ENOENT
    with pytest.raises(OSError) as info:
        kq.control(changes, 0)
    assert info.value.errno == errno.ENOENT
    probes = [kevent(i, KQ_FILTER_USER, KQ_EV_DELETE | KQ_EV_RECEIPT) for i in (0, 699, 701)]
    assert [r.data for r in kq.control(probes, 3, 0)] == [0, 0, errno.ENOENT]
