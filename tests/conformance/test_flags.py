"""Flag semantics from kqueue(2), on USER and TIMER knotes (no descriptors needed)."""

from __future__ import annotations

import errno

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_DISPATCH,
    KQ_EV_ENABLE,
    KQ_EV_ERROR,
    KQ_EV_FORCEONESHOT,
    KQ_EV_KEEPUDATA,
    KQ_EV_ONESHOT,
    KQ_EV_RECEIPT,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_NOTE_SECONDS,
    KQ_NOTE_TRIGGER,
    kevent,
)
from tests.conftest import wait_events


def user(ident: int, flags: int = 0, fflags: int = 0, data: int = 0, udata: bytes = b"") -> kevent:
    return kevent(ident, KQ_FILTER_USER, flags, fflags, data, udata)


def trigger(kq, ident: int, udata: bytes = b"") -> None:
    kq.control([user(ident, 0, KQ_NOTE_TRIGGER, udata=udata)], 0)


def test_ev_add_on_existing_knote_modifies_it(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"first")], 0)
    kq.control([user(1, KQ_EV_ADD, udata=b"second")], 0)
    trigger(kq, 1, b"second")
    events = wait_events(kq)
    assert len(events) == 1, "EV_ADD twice made two knotes"
    assert events[0].udata == b"second"


def test_pending_event_carries_udata_of_later_ev_add(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, udata=b"old")], 0)
    kq.control([user(1, KQ_EV_ADD, udata=b"new")], 0)
    assert [ev.udata for ev in wait_events(kq)] == [b"new"]


def test_delete_missing_knote_is_enoent(kq) -> None:
    err = kq.control([user(42, KQ_EV_DELETE)], 1, 0)
    assert len(err) == 1
    assert (err[0].ident, err[0].flags, err[0].data) == (42, KQ_EV_ERROR, errno.ENOENT)


def test_change_without_add_on_missing_knote_is_enoent(kq) -> None:
    assert kq.control([user(42, KQ_EV_ENABLE)], 1, 0)[0].data == errno.ENOENT


def test_delete_drops_pending_event(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)], 0)
    kq.control([user(1, KQ_EV_DELETE)], 0)
    assert kq.control(None, 4, 0) == []


def test_oneshot_delivers_once_then_knote_is_gone(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_ONESHOT, KQ_NOTE_TRIGGER)], 0)
    ev = wait_events(kq)[0]
    assert ev.flags & KQ_EV_ONESHOT
    assert kq.control(None, 4, 0) == []
    assert kq.control([user(1, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_level_triggered_user_event_repeats_until_cleared(kq) -> None:
    kq.control([user(1, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)
    assert len(wait_events(kq)) == 1
    assert len(kq.control(None, 4, 0)) == 1, "a level knote must be reported again"
    kq.control([user(1, KQ_EV_CLEAR)], 0)  # EV_CLEAR in a change resets a USER knote
    assert kq.control(None, 4, 0) == []


def test_clear_reports_once_per_trigger(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    trigger(kq, 1)
    assert len(wait_events(kq)) == 1
    assert kq.control(None, 4, 0) == [], "EV_CLEAR: the second call returns nothing"


def test_dispatch_disables_after_delivery_until_enabled(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_DISPATCH)], 0)
    trigger(kq, 1)
    assert len(wait_events(kq)) == 1
    trigger(kq, 1)
    assert kq.control(None, 4, 0) == [], "a dispatched knote must stay quiet until EV_ENABLE"
    kq.control([user(1, KQ_EV_ENABLE)], 0)
    assert len(wait_events(kq)) == 1


def test_disabled_knote_tracks_state_and_delivers_on_enable(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_DISABLE)], 0)
    trigger(kq, 1)
    assert kq.control(None, 4, 0) == []
    kq.control([user(1, KQ_EV_ENABLE)], 0)
    assert len(wait_events(kq)) == 1


def test_disable_removes_a_pending_event_until_enable(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)], 0)
    kq.control([user(1, KQ_EV_DISABLE)], 0)
    assert kq.control(None, 4, 0) == []
    kq.control([user(1, KQ_EV_ENABLE)], 0)
    assert len(wait_events(kq)) == 1


def test_add_disabled_never_fires_before_enable(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_DISABLE | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)], 0)
    assert kq.control(None, 4, 0) == []
    kq.control([user(1, KQ_EV_ENABLE)], 0)
    assert len(wait_events(kq)) == 1


def test_enable_with_disable_is_einval(kq) -> None:
    err = kq.control([user(1, KQ_EV_ADD | KQ_EV_ENABLE | KQ_EV_DISABLE)], 1, 0)
    assert err[0].data == errno.EINVAL


def test_unknown_filter_is_einval(kq) -> None:
    err = kq.control([kevent(1, -30, KQ_EV_ADD)], 1, 0)
    assert (err[0].filter, err[0].flags, err[0].data) == (-30, KQ_EV_ERROR, errno.EINVAL)


def test_filter_zero_is_skipped(kq) -> None:
    assert kq.control([kevent(1, 0, KQ_EV_ADD)], 1, 0) == []


def test_receipt_reports_each_change_and_collects_no_events(kq) -> None:
    kq.control([user(9, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)  # a pending event that must not show
    receipts = kq.control(
        [user(1, KQ_EV_ADD | KQ_EV_RECEIPT, udata=b"a"), user(2, KQ_EV_ADD | KQ_EV_RECEIPT)], 8, 0
    )
    assert [(r.ident, r.flags, r.data, r.udata) for r in receipts] == [
        (1, KQ_EV_ERROR, 0, b"a"),
        (2, KQ_EV_ERROR, 0, b""),
    ]


def test_errors_keep_ident_filter_fflags_udata(kq) -> None:
    err = kq.control([user(7, KQ_EV_DELETE, 0x123, 99, b"keep")], 1, 0)[0]
    assert (err.ident, err.filter, err.fflags, err.udata) == (7, KQ_FILTER_USER, 0x123, b"keep")
    assert (err.flags, err.data) == (KQ_EV_ERROR, errno.ENOENT)


def test_change_errors_suppress_event_collection(kq) -> None:
    kq.control([user(1, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)
    out = kq.control([user(2, KQ_EV_DELETE)], 4, 0)
    assert [ev.flags for ev in out] == [KQ_EV_ERROR]


def test_no_room_for_an_error_raises_and_keeps_earlier_changes(kq) -> None:
    with pytest.raises(OSError) as info:
        kq.control([user(1, KQ_EV_ADD), user(2, KQ_EV_DELETE), user(3, KQ_EV_ADD)], 0, 0)
    assert info.value.errno == errno.ENOENT
    assert "max_events" in str(info.value)
    assert kq.control([user(1, KQ_EV_DELETE | KQ_EV_RECEIPT)], 1, 0)[0].data == 0
    assert kq.control([user(3, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_errors_beyond_room_raise_after_reporting_what_fits(kq) -> None:
    with pytest.raises(OSError):
        kq.control([user(1, KQ_EV_DELETE), user(2, KQ_EV_DELETE)], 1, 0)


def test_ten_triggers_are_one_event(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    for _ in range(10):
        trigger(kq, 1)
    assert len(wait_events(kq)) == 1
    assert kq.control(None, 4, 0) == []


def test_max_events_limits_and_rest_stays_pending(kq) -> None:
    kq.control([user(i, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER) for i in range(5)], 0)
    first = kq.control(None, 2, 0)
    rest = kq.control(None, 10, 0)
    assert len(first) == 2 and len(rest) == 3
    assert sorted(ev.ident for ev in first + rest) == list(range(5))


def test_same_knote_never_twice_in_one_call(kq) -> None:
    kq.control([user(1, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)  # level: re-queued after delivery
    assert [ev.ident for ev in kq.control(None, 10, 0)] == [1]


def test_level_events_rotate_fairly(kq) -> None:
    kq.control([user(i, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(3)], 0)
    seen = [ev.ident for _ in range(3) for ev in kq.control(None, 1, 0)]
    assert sorted(seen) == [0, 1, 2]


def test_identity_is_ident_and_filter(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, udata=b"u")], 0)
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD | KQ_EV_ONESHOT, 0, 0, b"t")], 0)
    events = wait_events(kq, 2)
    assert sorted(ev.udata for ev in events) == [b"t", b"u"]


def test_inactive_knotes_do_not_use_up_max_events(kq) -> None:
    kq.control([user(1, KQ_EV_ADD, KQ_NOTE_TRIGGER), user(2, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)
    assert len(kq.control(None, 4, 0)) == 2  # both queued, level-triggered
    kq.control([user(1, KQ_EV_CLEAR)], 0)  # 1 no longer holds, still first in the queue
    assert [ev.ident for ev in kq.control(None, 1, 0)] == [2]


def test_a_change_without_keepudata_replaces_udata(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"ctx")], 0)
    trigger(kq, 1, b"")  # any change to a knote carries its udata (kqueue_register)
    assert [ev.udata for ev in wait_events(kq)] == [b""]


def test_trigger_with_keepudata_keeps_udata(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"ctx")], 0)
    kq.control([user(1, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)], 0)
    ev = wait_events(kq)[0]
    assert (ev.udata, ev.flags & KQ_EV_KEEPUDATA) == (b"ctx", 0)


def test_enable_with_keepudata_rearms_a_dispatch_knote_and_keeps_udata(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_DISPATCH, udata=b"job")], 0)
    kq.control([user(1, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)], 0)
    assert [ev.udata for ev in wait_events(kq)] == [b"job"]
    kq.control([user(1, KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER)], 0)
    assert kq.control(None, 4, 0) == [], "dispatched: quiet until EV_ENABLE"
    kq.control([user(1, KQ_EV_ENABLE | KQ_EV_KEEPUDATA)], 0)
    assert [ev.udata for ev in wait_events(kq)] == [b"job"]


def test_add_with_keepudata_is_einval_and_add_still_replaces_udata(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"old")], 0)
    err = kq.control([user(1, KQ_EV_ADD | KQ_EV_KEEPUDATA, KQ_NOTE_TRIGGER, udata=b"x")], 1, 0)
    assert (err[0].flags, err[0].data) == (KQ_EV_ERROR, errno.EINVAL)
    assert kq.control(None, 4, 0) == [], "the refused change must not trigger"
    kq.control([user(1, KQ_EV_ADD, KQ_NOTE_TRIGGER, udata=b"new")], 0)
    assert [ev.udata for ev in wait_events(kq)] == [b"new"]


def test_forceoneshot_delivers_an_idle_knote_once_then_deletes_it(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR, udata=b"u")], 0)
    assert kq.control(None, 4, 0) == []
    kq.control([user(1, KQ_EV_FORCEONESHOT | KQ_EV_KEEPUDATA)], 0)
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.udata) == (1, b"u")
    assert ev.flags & KQ_EV_ONESHOT and not ev.flags & KQ_EV_FORCEONESHOT
    assert kq.control(None, 4, 0) == []
    assert kq.control([user(1, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_forceoneshot_on_a_timer_reports_its_state_now(kq) -> None:
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600)], 0)
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_FORCEONESHOT)], 0)
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.data) == (1, 0) and ev.flags & KQ_EV_ONESHOT
    assert kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_forceoneshot_on_a_disabled_knote_waits_for_enable(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_DISABLE)], 0)
    kq.control([user(1, KQ_EV_FORCEONESHOT)], 0)
    assert kq.control(None, 4, 0) == []
    kq.control([user(1, KQ_EV_ENABLE)], 0)
    assert wait_events(kq)[0].flags & KQ_EV_ONESHOT
    assert kq.control([user(1, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_forceoneshot_is_ignored_when_the_knote_is_created(kq) -> None:
    kq.control([user(1, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_FORCEONESHOT)], 0)
    assert kq.control(None, 4, 0) == []
    for _ in range(2):
        trigger(kq, 1)
        ev = wait_events(kq)[0]
        assert not ev.flags & (KQ_EV_ONESHOT | KQ_EV_FORCEONESHOT)
