"""The core's admission hook: a host's authorization and quotas refuse a change at its place in
the changelist, and hear of every knote that goes (so its counts never drift)."""

from __future__ import annotations

import errno
import os

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_DELETE,
    KQ_EV_ERROR,
    KQ_EV_ONESHOT,
    KQ_EV_RECEIPT,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_NOTE_TRIGGER,
    kevent,
    kqueue,
)
from kqd.core.linux.knote import Knote


class CountingAdmission:
    """Admits at most *limit* knotes; counts what it admitted and what was released."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: set[tuple[int, int]] = set()

    def admit(self, change: kevent, existing: Knote | None) -> None:
        if existing is None:
            if len(self.held) >= self.limit:
                raise OSError(errno.ENOSPC, "over the test's limit")
            self.held.add((change.ident, change.filter))

    def released(self, kn: Knote) -> None:
        self.held.remove(kn.key)


def test_a_refused_change_is_an_error_at_its_place() -> None:
    with kqueue() as kq:
        kq.admission = CountingAdmission(limit=2)
        changes = [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_RECEIPT) for i in range(4)]
        receipts = kq.control(changes, 4, 0)
        assert [(r.ident, r.flags, r.data) for r in receipts] == [
            (0, KQ_EV_ERROR, 0),
            (1, KQ_EV_ERROR, 0),
            (2, KQ_EV_ERROR, errno.ENOSPC),
            (3, KQ_EV_ERROR, errno.ENOSPC),
        ]


def test_every_knote_that_goes_is_released() -> None:
    admission = CountingAdmission(limit=10)
    kq = kqueue()
    kq.admission = admission
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_ONESHOT, KQ_NOTE_TRIGGER)], 0)
    kq.control([kevent(2, KQ_FILTER_USER, KQ_EV_ADD), kevent(3, KQ_FILTER_USER, KQ_EV_ADD)], 0)
    assert len(admission.held) == 3
    assert [ev.ident for ev in kq.control(None, 4, 0)] == [1]  # delivered ONESHOT: gone
    kq.control([kevent(2, KQ_FILTER_USER, KQ_EV_DELETE)], 0)
    assert admission.held == {(3, KQ_FILTER_USER)}
    kq.close()
    assert admission.held == set()


def test_a_knote_whose_attach_fails_is_released() -> None:
    admission = CountingAdmission(limit=10)
    r, w = os.pipe()
    try:
        with kqueue() as kq:
            kq.admission = admission
            with pytest.raises(OSError) as info:  # admitted, then refused by the filter
                kq.control([kevent(r, KQ_FILTER_VNODE, KQ_EV_ADD)], 0)
            assert info.value.errno == errno.EINVAL
            assert admission.held == set()
    finally:
        os.close(r)
        os.close(w)
