"""EVFILT_USER: events the program triggers itself (NOTE_TRIGGER), with 24 bits of user fflags.

No descriptor per knote: a trigger from another thread reaches a waiter through the kqueue's
wake eventfd like any other activation.

A snapshot keeps the user bits, the data and whether a trigger is pending: a knote triggered
and not yet delivered (or, without EV_CLEAR, triggered at all) is active again once restored.
"""

from __future__ import annotations

from typing import Any

from kqd.core.constants import (
    KQ_EV_CLEAR,
    KQ_NOTE_FFAND,
    KQ_NOTE_FFCOPY,
    KQ_NOTE_FFCTRLMASK,
    KQ_NOTE_FFLAGSMASK,
    KQ_NOTE_FFOR,
    KQ_NOTE_TRIGGER,
)
from kqd.core.kevent import kevent
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote


def _combine(stored: int, fflags: int) -> int:
    """Apply the NOTE_FF* operation in *fflags* to the stored user bits."""
    bits = fflags & KQ_NOTE_FFLAGSMASK
    op = fflags & KQ_NOTE_FFCTRLMASK
    if op == KQ_NOTE_FFAND:
        return stored & bits
    if op == KQ_NOTE_FFOR:
        return stored | bits
    if op == KQ_NOTE_FFCOPY:
        return bits
    return stored  # NOTE_FFNOP


class UserFilter(Filter):
    """fflags out = the stored user bits, data out = the last data given; kn.hook = triggered."""

    def attach(self, kn: Knote) -> None:
        kn.hook = bool(kn.sfflags & KQ_NOTE_TRIGGER)
        kn.sfflags = kn.sfflags & KQ_NOTE_FFLAGSMASK

    def snapshot(self, kn: Knote) -> dict[str, Any]:
        return {"triggered": bool(kn.hook), "fflags": kn.sfflags, "data": kn.sdata}

    def restore(self, kn: Knote, state: dict[str, Any]) -> None:
        kn.hook = bool(state["triggered"])
        kn.sfflags = state["fflags"] & KQ_NOTE_FFLAGSMASK
        kn.sdata = state["data"]

    def touch(self, kn: Knote, change: kevent) -> None:
        if change.fflags & KQ_NOTE_TRIGGER:
            kn.hook = True
        kn.sfflags = _combine(kn.sfflags, change.fflags)
        kn.sdata = change.data
        if change.flags & KQ_EV_CLEAR:
            kn.hook = False
            kn.fflags = kn.data = 0

    def event(self, kn: Knote, hint: object) -> bool:
        return bool(kn.hook)

    def report(self, kn: Knote) -> tuple[int, int]:
        if kn.flags & KQ_EV_CLEAR:
            kn.hook = False
        return kn.sfflags, kn.sdata
