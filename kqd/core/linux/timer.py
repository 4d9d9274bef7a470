"""EVFILT_TIMER: periodic and one-shot timers on the kqueue's timer heap (no descriptor each).

data in is the period in the unit fflags names (NOTE_MSECONDS by default); data out counts the
expirations since the last report. Periodic unless EV_ONESHOT or NOTE_ABSTIME. Re-adding a timer
restarts it and forgets undelivered expirations, as FreeBSD's filt_timertouch does.
NOTE_ABSTIME deadlines are wall-clock times converted to the monotonic clock when registered.

Relative timers get EV_CLEAR automatically; NOTE_ABSTIME timers do not (filt_timerattach): once
expired, an absolute timer without EV_CLEAR or EV_ONESHOT is level-triggered and reported
(data 1) at every call until it is deleted or re-added.
"""

from __future__ import annotations

import errno
import time

from kqd.core.constants import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_ONESHOT,
    KQ_NOTE_ABSTIME,
    KQ_NOTE_MSECONDS,
    KQ_NOTE_NSECONDS,
    KQ_NOTE_SECONDS,
    KQ_NOTE_USECONDS,
)
from kqd.core.kevent import kevent
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote
from kqd.core.linux.kqueue import TimerHandle

_UNIT_NS = {
    0: 1_000_000,
    KQ_NOTE_SECONDS: 1_000_000_000,
    KQ_NOTE_MSECONDS: 1_000_000,
    KQ_NOTE_USECONDS: 1_000,
    KQ_NOTE_NSECONDS: 1,
}
_UNITS = KQ_NOTE_SECONDS | KQ_NOTE_MSECONDS | KQ_NOTE_USECONDS | KQ_NOTE_NSECONDS
_MAX_DEADLINE_NS = 2**62


def interval_ns(flags: int, fflags: int, data: int) -> int:
    """The timer's period (or absolute wall-clock time) in ns; EINVAL for bad input."""
    if data < 0:
        raise OSError(errno.EINVAL, f"negative timer period {data}")
    if fflags & ~(_UNITS | KQ_NOTE_ABSTIME):
        raise OSError(
            errno.EINVAL, f"unknown timer fflags {fflags & ~(_UNITS | KQ_NOTE_ABSTIME):#x}"
        )
    unit = _UNIT_NS.get(fflags & _UNITS)
    if unit is None:
        raise OSError(errno.EINVAL, "more than one timer unit in fflags")
    if data == 0 and not flags & KQ_EV_ONESHOT and not fflags & KQ_NOTE_ABSTIME:
        data = 1  # FreeBSD: a periodic timer of 0 ticks every unit
    return data * unit


class TimerState:
    __slots__ = ("deadline", "handle", "period")

    def __init__(self, handle: TimerHandle, period: int | None, deadline: int) -> None:
        self.handle = handle
        self.period = period
        self.deadline = deadline


class TimerFilter(Filter):
    def attach(self, kn: Knote) -> None:
        interval = interval_ns(kn.flags, kn.sfflags, kn.sdata)
        if not kn.sfflags & KQ_NOTE_ABSTIME:
            kn.flags |= KQ_EV_CLEAR
        self._start(kn, interval)

    def detach(self, kn: Knote) -> None:
        kn.hook.handle.cancel()

    def touch(self, kn: Knote, change: kevent) -> None:
        """Only a re-add restarts the timer (filt_timertouch); EV_ENABLE/EV_DISABLE alone
        leave it running and its expirations counted."""
        if not change.flags & KQ_EV_ADD:
            return
        interval = interval_ns(kn.flags, change.fflags, change.data)
        kn.hook.handle.cancel()
        self.kq.dequeue(kn)
        kn.data = 0
        super().touch(kn, change)
        self._start(kn, interval)

    def event(self, kn: Knote, hint: object) -> bool:
        return kn.data != 0

    def _start(self, kn: Knote, interval: int) -> None:
        now = time.monotonic_ns()
        if kn.sfflags & KQ_NOTE_ABSTIME:
            deadline, period = now + interval - time.time_ns(), None
        else:
            deadline = now + interval
            period = None if kn.flags & KQ_EV_ONESHOT else interval
        deadline = min(deadline, _MAX_DEADLINE_NS)
        kn.hook = TimerState(
            self.kq.call_at(deadline, lambda t: self._expire(kn, t)), period, deadline
        )

    def _expire(self, kn: Knote, now: int) -> None:
        state: TimerState = kn.hook
        if state.period:
            missed = (now - state.deadline) // state.period
            kn.data += 1 + missed
            state.deadline += (1 + missed) * state.period
            state.handle = self.kq.call_at(state.deadline, lambda t: self._expire(kn, t))
        else:
            kn.data += 1
        self.kq.activate(kn, None)
