"""EVFILT_PROC: exits of any visible process with their wait(2) status; fork, exec, track."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_ENABLE,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_NOTE_CHILD,
    KQ_NOTE_EXEC,
    KQ_NOTE_EXIT,
    KQ_NOTE_FORK,
    KQ_NOTE_TRACK,
    kevent,
)
from tests.conftest import WAIT_BOUND, sleeper, wait_events


def proc(
    pid: int, fflags: int = KQ_NOTE_EXIT, flags: int = KQ_EV_ADD, udata: bytes = b""
) -> kevent:
    return kevent(pid, KQ_FILTER_PROC, flags, fflags, 0, udata)


def test_exit_of_a_child_with_status(kq) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"], stdin=subprocess.PIPE
    )
    assert kq.control([proc(child.pid, udata=b"job-17")], 0) == []
    child.stdin.close()
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.filter, ev.fflags, ev.udata) == (
        child.pid,
        KQ_FILTER_PROC,
        KQ_NOTE_EXIT,
        b"job-17",
    )
    assert ev.data == 3 << 8
    assert ev.flags & KQ_EV_EOF and ev.flags & KQ_EV_ONESHOT and ev.flags & KQ_EV_CLEAR
    assert child.wait(WAIT_BOUND) == 3, "kqd must not reap: the parent still gets the status"


def test_exit_of_a_process_that_is_not_our_child(kq, orphan_factory) -> None:
    orphan = orphan_factory(7)
    with open(f"/proc/{orphan.pid}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    assert parent != os.getpid()
    kq.control([proc(orphan.pid, udata=b"pwait")], 0)
    orphan.release()
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.fflags, ev.udata) == (orphan.pid, KQ_NOTE_EXIT, b"pwait")
    assert ev.data in (7 << 8, -1), "data is the wait status, or -1 where it cannot be known"


def test_killed_child_reports_the_signal(kq) -> None:
    child = sleeper()
    kq.control([proc(child.pid)], 0)
    child.kill()
    assert wait_events(kq)[0].data == signal.SIGKILL
    child.wait(WAIT_BOUND)


def test_zombie_fires_at_once(kq) -> None:
    child = subprocess.Popen(["sh", "-c", "exit 5"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
    kq.control([proc(child.pid)], 0)
    ev = kq.control(None, 4, 0)
    assert len(ev) == 1 and ev[0].data == 5 << 8
    child.wait(WAIT_BOUND)


def test_missing_pid_is_esrch(kq) -> None:
    child = subprocess.Popen(["true"])
    child.wait(WAIT_BOUND)
    pid = child.pid
    err = kq.control([proc(pid)], 1, 0)[0]
    assert (err.flags, err.data) == (KQ_EV_ERROR, errno.ESRCH)
    assert kq.control([proc(2**40)], 1, 0)[0].data == errno.ESRCH


def test_exit_drops_the_knote(kq) -> None:
    child = subprocess.Popen(["true"])
    kq.control([proc(child.pid)], 0)
    wait_events(kq)
    child.wait(WAIT_BOUND)
    assert kq.control([proc(child.pid, flags=KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def test_exit_while_disabled_is_delivered_on_enable(kq) -> None:
    child = sleeper()
    kq.control([proc(child.pid, flags=KQ_EV_ADD | KQ_EV_DISABLE)], 0)
    child.stdin.close()
    child.wait(WAIT_BOUND)
    assert kq.control(None, 4, 0.05) == []
    kq.control([proc(child.pid, flags=KQ_EV_ENABLE)], 0)
    assert wait_events(kq)[0].fflags == KQ_NOTE_EXIT


def test_exit_without_note_exit_is_dropped_silently(kq) -> None:
    if not _connector_available(kq):
        pytest.skip("no proc connector here")
    child = sleeper()
    kq.control([proc(child.pid, KQ_NOTE_EXEC)], 0)
    child.stdin.close()
    child.wait(WAIT_BOUND)
    assert kq.control(None, 4, 0.2) == []
    assert kq.control([proc(child.pid, flags=KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT


def _connector_available(kq) -> bool:
    err = kq.control([proc(os.getpid(), KQ_NOTE_FORK, KQ_EV_ADD)], 1, 0)
    kq.control([proc(os.getpid(), flags=KQ_EV_DELETE)], 1, 0)
    return not (err and err[0].data == errno.ENOTSUP)


def test_fork_and_exec_notes(kq) -> None:
    if not _connector_available(kq):
        pytest.skip("no proc connector here: NOTE_FORK/EXEC/TRACK answer ENOTSUP")
    r, w = os.pipe()
    child = subprocess.Popen(["sh", "-c", "read x; sleep 0 & wait; exec true"], stdin=r)
    os.close(r)
    kq.control(
        [proc(child.pid, KQ_NOTE_FORK | KQ_NOTE_EXEC | KQ_NOTE_EXIT, KQ_EV_ADD | KQ_EV_CLEAR)], 0
    )
    os.close(w)
    seen = 0
    while not seen & KQ_NOTE_EXIT:
        for ev in wait_events(kq):
            seen |= ev.fflags
    assert seen & KQ_NOTE_FORK and seen & KQ_NOTE_EXEC
    child.wait(WAIT_BOUND)


def test_track_follows_children(kq) -> None:
    if not _connector_available(kq):
        pytest.skip("no proc connector here")
    r, w = os.pipe()
    child = subprocess.Popen(["sh", "-c", "read x; sh -c 'exit 4'; exit 0"], stdin=r)
    os.close(r)
    kq.control([proc(child.pid, KQ_NOTE_EXIT | KQ_NOTE_FORK | KQ_NOTE_TRACK, udata=b"tree")], 0)
    os.close(w)
    events: list[kevent] = []
    while not any(e.ident == child.pid and e.fflags & KQ_NOTE_EXIT for e in events):
        events += wait_events(kq)
    child.wait(WAIT_BOUND)
    notices = [e for e in events if e.fflags & KQ_NOTE_CHILD]
    assert notices, f"no NOTE_CHILD among {events}"
    grandchild = notices[0].ident
    assert notices[0].data == child.pid and notices[0].udata == b"tree"
    assert any(e.ident == child.pid and e.fflags & KQ_NOTE_FORK for e in events)
    exits = [e for e in events if e.ident == grandchild and e.fflags & KQ_NOTE_EXIT]
    assert not exits or exits[0].data == 4 << 8


def test_delete_proc_knote_stops_watching(kq) -> None:
    child = sleeper()
    kq.control([proc(child.pid), proc(child.pid, flags=KQ_EV_DELETE)], 0)
    child.stdin.close()
    child.wait(WAIT_BOUND)
    assert kq.control(None, 4, 0.05) == []
