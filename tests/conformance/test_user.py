"""EVFILT_USER: NOTE_TRIGGER and the NOTE_FF* operations on the 24 user bits."""

from __future__ import annotations

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_USER,
    KQ_NOTE_FFAND,
    KQ_NOTE_FFCOPY,
    KQ_NOTE_FFLAGSMASK,
    KQ_NOTE_FFNOP,
    KQ_NOTE_FFOR,
    KQ_NOTE_TRIGGER,
    kevent,
)
from tests.conftest import wait_events


def user(ident: int, flags: int = 0, fflags: int = 0, data: int = 0) -> kevent:
    return kevent(ident, KQ_FILTER_USER, flags, fflags, data)


def test_add_does_not_fire_without_trigger(kq) -> None:
    kq.control([user(1, KQ_EV_ADD)], 0)
    assert kq.control(None, 4, 0.02) == []


def test_trigger_reports_user_bits_and_last_data(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_FFCOPY | 0x11)], 0)
    kq.control([user(1, 0, KQ_NOTE_TRIGGER, 5)], 0)
    ev = wait_events(kq)[0]
    assert (ev.fflags, ev.data, ev.flags) == (0x11, 5, KQ_EV_CLEAR)


@pytest.mark.parametrize(
    ("op", "bits", "expected"),
    [
        (KQ_NOTE_FFNOP, 0x0F, 0xF0),
        (KQ_NOTE_FFAND, 0x30, 0x30),
        (KQ_NOTE_FFOR, 0x0F, 0xFF),
        (KQ_NOTE_FFCOPY, 0x0F, 0x0F),
    ],
)
def test_ff_operations(kq, op: int, bits: int, expected: int) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_FFCOPY | 0xF0)], 0)
    kq.control([user(1, 0, KQ_NOTE_TRIGGER | op | bits)], 0)
    assert wait_events(kq)[0].fflags == expected


def test_user_bits_are_masked_to_24(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_FFCOPY | KQ_NOTE_FFLAGSMASK)], 0)
    kq.control([user(1, 0, KQ_NOTE_TRIGGER)], 0)
    assert wait_events(kq)[0].fflags == KQ_NOTE_FFLAGSMASK


def test_trigger_at_add(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)], 0)
    assert len(wait_events(kq)) == 1
