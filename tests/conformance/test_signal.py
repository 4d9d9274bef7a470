"""EVFILT_SIGNAL: deliveries counted, coexisting with handlers (in-process only)."""

from __future__ import annotations

import os
import signal

import pytest

from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_EV_DELETE, KQ_FILTER_SIGNAL, kevent
from tests.conftest import wait_events


@pytest.fixture(autouse=True)
def _local_only(backend) -> None:
    if not backend.local:
        pytest.skip("signals are delivered to the daemon's process, not ours")


def test_signals_are_counted(kq) -> None:
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        kq.control([kevent(signal.SIGUSR1, KQ_FILTER_SIGNAL, KQ_EV_ADD, udata=b"s")], 0)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        events = wait_events(kq)
        total = sum(ev.data for ev in events)
        while total < 2:
            total += sum(ev.data for ev in wait_events(kq))
        assert total == 2 and events[0].flags & KQ_EV_CLEAR and events[0].udata == b"s"
        kq.control([kevent(signal.SIGUSR1, KQ_FILTER_SIGNAL, KQ_EV_DELETE)], 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_previous_handler_still_runs(kq) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        kq.control([kevent(signal.SIGUSR2, KQ_FILTER_SIGNAL, KQ_EV_ADD)], 0)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert wait_events(kq)[0].data == 1
        assert calls == [signal.SIGUSR2]
        kq.control([kevent(signal.SIGUSR2, KQ_FILTER_SIGNAL, KQ_EV_DELETE)], 0)
        assert signal.getsignal(signal.SIGUSR2) is not None
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_invalid_signal_is_einval(kq) -> None:
    import errno

    assert kq.control([kevent(0, KQ_FILTER_SIGNAL, KQ_EV_ADD)], 1, 0)[0].data == errno.EINVAL
    assert kq.control([kevent(500, KQ_FILTER_SIGNAL, KQ_EV_ADD)], 1, 0)[0].data == errno.EINVAL
