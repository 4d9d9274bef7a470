"""EVFILT_TIMER: periodic and one-shot timers on the kqueue's timer heap (no descriptor each).

data in is the period in the unit fflags names (NOTE_MSECONDS by default); data out counts the
expirations since the last report. Periodic unless EV_ONESHOT or NOTE_ABSTIME. Re-adding a timer
restarts it and forgets undelivered expirations, as FreeBSD's filt_timertouch does.
NOTE_ABSTIME deadlines are wall-clock times converted to the monotonic clock when registered.

Relative timers get EV_CLEAR automatically; NOTE_ABSTIME timers do not (filt_timerattach): once
expired, an absolute timer without EV_CLEAR or EV_ONESHOT is level-triggered and reported
(data 1) at every call until it is deleted or re-added.

A snapshot keeps the schedule in wall-clock time, since the monotonic clock restarts with the
machine: the next deadline, the period, and the expirations counted but not yet reported. A
restored timer counts the deadlines that passed meanwhile (all those of a periodic timer on its
schedule; the one of a one-shot or NOTE_ABSTIME timer, which then fires at once) and goes on
with the next deadline of the same schedule.
"""

from __future__ import annotations

import errno
import time
from typing import Any

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
    """The schedule: the next CLOCK_MONOTONIC deadline (None once a one-shot or NOTE_ABSTIME
    timer has expired) and the period (None for those)."""

    __slots__ = ("deadline", "handle", "period")

    def __init__(self, period: int | None, deadline: int | None) -> None:
        self.handle: TimerHandle | None = None
        self.period = period
        self.deadline = deadline


class TimerFilter(Filter):
    def attach(self, kn: Knote) -> None:
        interval = interval_ns(kn.flags, kn.sfflags, kn.sdata)
        if not kn.sfflags & KQ_NOTE_ABSTIME:
            kn.flags |= KQ_EV_CLEAR
        self._start(kn, interval)

    def detach(self, kn: Knote) -> None:
        self._cancel(kn)

    def snapshot(self, kn: Knote) -> dict[str, Any]:
        state: TimerState = kn.hook
        next_wall = None
        if state.deadline is not None:
            next_wall = state.deadline - time.monotonic_ns() + time.time_ns()
        return {"period_ns": state.period, "next_wall_ns": next_wall, "pending": kn.data}

    def restore(self, kn: Knote, state: dict[str, Any]) -> None:
        period, next_wall = state["period_ns"], state["next_wall_ns"]
        kn.data = state["pending"]
        now_wall, now = time.time_ns(), time.monotonic_ns()
        if next_wall is not None and now_wall >= next_wall:  # deadlines passed while down
            if period:
                missed = 1 + (now_wall - next_wall) // period
                kn.data += missed
                next_wall += missed * period
            else:
                kn.data += 1
                next_wall = None
        deadline = None if next_wall is None else now + next_wall - now_wall
        self._schedule(kn, period, deadline)

    def touch(self, kn: Knote, change: kevent) -> None:
        """Only a re-add restarts the timer (filt_timertouch); EV_ENABLE/EV_DISABLE alone
        leave it running and its expirations counted."""
        if not change.flags & KQ_EV_ADD:
            return
        interval = interval_ns(kn.flags, change.fflags, change.data)
        self._cancel(kn)
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
        self._schedule(kn, period, deadline)

    def _schedule(self, kn: Knote, period: int | None, deadline: int | None) -> None:
        kn.hook = state = TimerState(period, deadline)
        if deadline is not None:
            state.deadline = min(deadline, _MAX_DEADLINE_NS)
            state.handle = self.kq.call_at(state.deadline, lambda t: self._expire(kn, t))

    def _cancel(self, kn: Knote) -> None:
        state: TimerState = kn.hook
        if state.handle is not None:
            state.handle.cancel()

    def _expire(self, kn: Knote, now: int) -> None:
        state: TimerState = kn.hook
        assert state.deadline is not None
        if state.period:
            missed = (now - state.deadline) // state.period
            kn.data += 1 + missed
            state.deadline += (1 + missed) * state.period
            state.handle = self.kq.call_at(state.deadline, lambda t: self._expire(kn, t))
        else:
            kn.data += 1
            state.deadline = state.handle = None
        self.kq.activate(kn, None)
