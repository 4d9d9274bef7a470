"""close_in_steps(): closed for every caller at once, its knotes dropped a step at a time.

A host that cannot stop for a whole close (the daemon, one event loop for every client) drops a
large kqueue's knotes over several turns; everything a caller can observe must still change at
the call: the kqueue refuses every use, a blocked waiter wakes up, the knotes on the caller's
descriptors are gone so the numbers can be closed or reused, and the admission hears of every
knote. Only the in-process core is under test here.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_READ,
    KQ_FILTER_USER,
    KQ_NOTE_TRIGGER,
    kevent,
    kqueue,
)
from kqd.core.linux.knote import Knote
from tests.conftest import WAIT_BOUND

KNOTES = 1000
STEP = 100


class Counting:
    """An admission that counts the knotes it admitted and heard of going."""

    def __init__(self) -> None:
        self.live = 0

    def admit(self, change: kevent, existing: Knote | None) -> None:
        if existing is None:
            self.live += 1

    def released(self, kn: Knote) -> None:
        self.live -= 1


def users(count: int) -> list[kevent]:
    return [
        kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER) for i in range(count)
    ]


def test_closed_at_once_and_knotes_dropped_in_steps() -> None:
    kq = kqueue()
    admission = Counting()
    kq.admission = admission
    kq.control(users(KNOTES), 0)
    assert admission.live == KNOTES

    steps = kq.close_in_steps(STEP)

    assert kq.closed
    with pytest.raises(ValueError):
        kq.control(None, 1, 0)
    with pytest.raises(ValueError):
        kq.fileno()
    with pytest.raises(ValueError):
        kq.apply(users(1), 0)
    left = list(steps)
    assert left == list(range(KNOTES - STEP, 0, -STEP)), "one step per STEP knotes, then done"
    assert admission.live == 0, "the admission heard of every knote"
    assert "knotes=0" in repr(kq)


def test_a_waiter_wakes_up_at_the_call() -> None:
    kq = kqueue()
    outcome: list[BaseException | list[kevent]] = []
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        try:
            outcome.append(kq.control(None, 1, WAIT_BOUND))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    assert waiting.wait(WAIT_BOUND), "the waiter did not start"
    steps = kq.close_in_steps(STEP)  # not stepped yet: the waiter must wake anyway
    thread.join(WAIT_BOUND)
    assert not thread.is_alive(), f"the waiter did not wake up within {WAIT_BOUND}s of the close"
    assert isinstance(outcome[0], ValueError), outcome
    list(steps)


def test_knotes_on_descriptors_go_before_it_returns() -> None:
    kq = kqueue()
    admission = Counting()
    kq.admission = admission
    a, b = socket.socketpair()
    try:
        kq.control([kevent(a.fileno(), KQ_FILTER_READ), *users(KNOTES)], 0)
        steps = kq.close_in_steps(STEP)
        assert admission.live == KNOTES, "the READ knote went at the call, the USER ones not yet"
        a.close()  # the number may be closed (and reused) at once
        list(steps)
        assert admission.live == 0
    finally:
        a.close()
        b.close()


def test_close_finishes_an_abandoned_close() -> None:
    kq = kqueue()
    admission = Counting()
    kq.admission = admission
    kq.control(users(KNOTES), 0)
    steps = kq.close_in_steps(STEP)
    next(steps)
    kq.close()
    assert admission.live == 0
    assert list(steps) == [], "nothing left for the abandoned iterator"
    assert list(kq.close_in_steps(STEP)) == [], "a later call has nothing to do"


def test_own_descriptors_closed_after_the_last_step() -> None:
    before = len(os.listdir("/proc/self/fd"))
    kq = kqueue()
    kq.control(users(KNOTES), 0)
    steps = kq.close_in_steps(STEP)
    list(steps)
    assert len(os.listdir("/proc/self/fd")) == before, "epoll, timerfd and eventfd are closed"
