"""The seed article's two lessons, as tests."""

from __future__ import annotations

import os
import subprocess

from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent
from tests.conftest import WAIT_BOUND, wait_events


def test_pwait_waits_for_a_process_that_is_not_a_child(kq, orphan_factory) -> None:
    """Section 2.1: register NOTE_EXIT for a pid, then block until it exits."""
    orphan = orphan_factory(0)
    kq.control([kevent(orphan.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0)], 0)
    orphan.release()
    ev = wait_events(kq, max_events=1)[0]
    assert ev.ident == orphan.pid and ev.fflags & KQ_NOTE_EXIT


def test_librthread_reaper_ev_add_on_a_pending_knote_replaces_udata(kq) -> None:
    """Section 3.2: pid 3456 exits and its event is pending; 3456' registers with the same pid;
    the reaper then finds the exit event of 3456 carrying the udata ("stack") of 3456'."""
    thread = subprocess.Popen(["true"])
    kq.control(
        [
            kevent(
                thread.pid,
                KQ_FILTER_PROC,
                KQ_EV_ADD | KQ_EV_CLEAR,
                KQ_NOTE_EXIT,
                0,
                b"stack of 3456",
            )
        ],
        0,
    )
    os.waitid(os.P_PID, thread.pid, os.WEXITED | os.WNOWAIT)  # exited: its event is pending
    kq.control(
        [
            kevent(
                thread.pid,
                KQ_FILTER_PROC,
                KQ_EV_ADD | KQ_EV_CLEAR,
                KQ_NOTE_EXIT,
                0,
                b"stack of 3456'",
            )
        ],
        0,
    )
    events = kq.control(None, 4, 0)
    while not events:
        events = wait_events(kq)
    assert len(events) == 1, "one knote per (ident, filter): the second EV_ADD modified the first"
    assert events[0].ident == thread.pid
    assert events[0].udata == b"stack of 3456'", "the pending event carries the new udata"
    thread.wait(WAIT_BOUND)
