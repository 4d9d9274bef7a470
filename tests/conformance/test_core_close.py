"""close() gives back every descriptor at once, not when the garbage collector runs.

Counting this process's descriptors only means something for the in-process core.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_EXIT,
    KQ_NOTE_FORK,
    KQ_NOTE_SECONDS,
    KQ_NOTE_WRITE,
    kevent,
    kqueue,
)
from tests.conftest import WAIT_BOUND, sleeper


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_closed_kqueues_release_their_descriptors_without_gc(no_gc, tmp_path) -> None:
    child = sleeper()
    path = tmp_path / "watched"
    path.write_bytes(b"")
    a, b = socket.socketpair()
    file_fd = os.open(path, os.O_RDONLY)
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        probe = kqueue()
        fork_error = probe.control(
            [kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_FORK)], 1, 0
        )
        proc_notes = KQ_NOTE_EXIT | (0 if fork_error else KQ_NOTE_FORK)  # with the connector
        changes = [
            kevent(a, KQ_FILTER_READ, KQ_EV_ADD | KQ_EV_CLEAR),
            kevent(a, KQ_FILTER_WRITE, KQ_EV_ADD | KQ_EV_CLEAR),
            kevent(file_fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE),
            kevent(file_fd, KQ_FILTER_READ, KQ_EV_ADD),
            kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, proc_notes),
            kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600),
            kevent(2, KQ_FILTER_USER, KQ_EV_ADD),
            kevent(signal.SIGUSR1, KQ_FILTER_SIGNAL, KQ_EV_ADD),
        ]
        probe.control(changes, 0)  # the process-wide inotify and connector descriptors stay
        probe.close()
        before = open_descriptors()
        for i in range(2000):
            kq = kqueue()
            if i % 4:  # most with a knote of every kind, some bare
                kq.control(changes, 0)
                assert kq.control(None, 8, 0), "the socket is writable"
            kq.close()
        assert open_descriptors() == before
    finally:
        signal.signal(signal.SIGUSR1, previous)
        os.close(file_fd)
        a.close()
        b.close()
        child.kill()
        child.wait(WAIT_BOUND)


def test_close_wakes_a_waiter_and_its_wake_descriptor_goes_when_it_leaves(no_gc) -> None:
    before = open_descriptors()
    kq = kqueue()
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD)], 0)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            kq.control(None, 1, WAIT_BOUND)
        except BaseException as exc:  # the outcome is what the test checks
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + WAIT_BOUND
    while not kq._waiters and time.monotonic() < deadline:
        pass  # until the waiter is in epoll_wait (or just about to call it)
    assert kq._waiters == 1, "the waiter never got to epoll_wait"
    kq.close()
    waiter.join(WAIT_BOUND)
    assert not waiter.is_alive(), "close() did not wake the thread blocked in control()"
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError)
    assert open_descriptors() == before


def test_post_after_close_is_a_no_op() -> None:
    kq = kqueue()
    kq.close()
    reused = os.eventfd(0, os.EFD_NONBLOCK)  # likely the number the wake eventfd had
    try:
        kq.post(lambda: None)
        with pytest.raises(BlockingIOError) as info:
            os.eventfd_read(reused)
        assert info.value.errno == errno.EAGAIN, "post() after close() wrote to a reused number"
    finally:
        os.close(reused)
