"""EVFILT_SIGNAL: deliveries counted, coexisting with handlers, ignored signals counted too.

Signals sent to this process only reach the in-process core: those tests skip the remote backend.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import threading

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_RECEIPT,
    KQ_FILTER_SIGNAL,
    kevent,
)
from tests.conftest import WAIT_BOUND, wait_events


@pytest.fixture
def local(backend) -> None:
    if not backend.local:
        pytest.skip("signals are delivered to the daemon's process, not ours")


def sig(signum: int, flags: int = KQ_EV_ADD, udata: bytes = b"") -> kevent:
    return kevent(signum, KQ_FILTER_SIGNAL, flags, 0, 0, udata)


def count(kq, expected: int) -> int:
    """Deliveries reported until *expected* are in (EV_CLEAR: they may come in several events)."""
    total = 0
    while total < expected:
        total += sum(ev.data for ev in wait_events(kq))
    return total


def test_signals_are_counted(kq, local) -> None:
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        kq.control([sig(signal.SIGUSR1, udata=b"s")], 0)
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        events = wait_events(kq)
        assert events[0].flags & KQ_EV_CLEAR and events[0].udata == b"s"
        total = sum(ev.data for ev in events)
        assert total + count(kq, 2 - total) == 2
        assert kq.control(None, 4, 0) == []
        kq.control([sig(signal.SIGUSR1, KQ_EV_DELETE)], 0)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ignored_signal_is_counted_and_still_ignored(kq, local) -> None:
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        kq.control([sig(signal.SIGUSR1)], 0)
        os.kill(os.getpid(), signal.SIGUSR1)  # SIGUSR1's default action would end the process
        assert count(kq, 1) == 1
        kq.control([sig(signal.SIGUSR1, KQ_EV_DELETE)], 0)
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_ignored_sigchld_still_reaps_children(kq, local) -> None:
    """SIG_IGN for SIGCHLD also means "no zombies": that must hold while a knote counts."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        kq.control([sig(signal.SIGCHLD)], 0)
        child = subprocess.Popen(["sh", "-c", "read x"], stdin=subprocess.PIPE)
        watch = select.epoll()
        pidfd = os.pidfd_open(child.pid)
        watch.register(pidfd, select.EPOLLIN | select.EPOLLET)
        assert child.stdin is not None
        child.stdin.close()
        assert count(kq, 1) == 1
        # The exit and the reap are two edges of the pidfd; the reap comes with EPOLLHUP.
        events = 0
        while not events & select.EPOLLHUP:
            ready = watch.poll(WAIT_BOUND)
            assert ready, "the exited child was not reaped: SIG_IGN semantics were lost"
            events |= ready[0][1]
        os.close(pidfd)
        watch.close()
    finally:
        kq.control([sig(signal.SIGCHLD, KQ_EV_DELETE)], 0)
        signal.signal(signal.SIGCHLD, previous)


def test_blocked_signal_is_counted_when_delivered(kq, local) -> None:
    """Linux cannot see a blocked signal without taking it from the program (see
    signal_filter.py): kqd counts it when it is unblocked and delivered."""
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        kq.control([sig(signal.SIGUSR2)], 0)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR2)  # pending, for this thread
        assert signal.SIGUSR2 in signal.sigpending()
        assert kq.control(None, 4, 0) == []
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        assert count(kq, 1) == 1
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
        kq.control([sig(signal.SIGUSR2, KQ_EV_DELETE)], 0)
        signal.signal(signal.SIGUSR2, previous)


def test_previous_handler_still_runs(kq, local) -> None:
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        kq.control([sig(signal.SIGUSR2)], 0)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert wait_events(kq)[0].data == 1
        assert calls == [signal.SIGUSR2]
        kq.control([sig(signal.SIGUSR2, KQ_EV_DELETE)], 0)
        assert signal.getsignal(signal.SIGUSR2) is not None
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_handler_installed_later_is_left_in_place(kq, local) -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        kq.control([sig(signal.SIGUSR2)], 0)

        def mine(signum: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGUSR2, mine)
        kq.control([sig(signal.SIGUSR2, KQ_EV_DELETE)], 0)
        assert signal.getsignal(signal.SIGUSR2) is mine
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.parametrize(
    "signum",
    [0, 65, 500, 2**32, 2**64 - 1, signal.SIGKILL, signal.SIGSTOP, 32, 33],
    ids=["0", "65", "500", "2**32", "2**64-1", "SIGKILL", "SIGSTOP", "glibc-32", "glibc-33"],
)
def test_any_signal_number_is_accepted_and_never_fires(backend, kq, signum: int) -> None:
    """FreeBSD checks no range: a number no process can see a signal for never fires."""
    if not backend.local:
        pytest.skip("the daemon refuses SIGNAL knotes (test_signal_knotes_are_refused_remotely)")
    assert kq.control([sig(signum, KQ_EV_ADD | KQ_EV_RECEIPT)], 1, 0)[0].data == 0
    assert kq.control(None, 4, 0) == []
    assert kq.control([sig(signum, KQ_EV_DELETE | KQ_EV_RECEIPT)], 1, 0)[0].data == 0
    assert kq.control([sig(signum, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_signal_knotes_are_refused_remotely(backend, kq) -> None:
    """Over the wire a SIGNAL knote would watch the daemon's own signals: EPERM, per change."""
    if backend.local:
        pytest.skip("in process, the signals are the caller's own")
    receipt = kq.control([sig(signal.SIGUSR1, KQ_EV_ADD | KQ_EV_RECEIPT)], 1, 0)[0]
    assert receipt.data == errno.EPERM
