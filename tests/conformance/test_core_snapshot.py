"""Knotes carried across a restart of their host: ``snapshot`` from one kqueue, close it (the
host went down), ``restore`` into a fresh kqueue, with the state passed through JSON as a store
would keep it. Re-arming is checked against the object's identity, never its number alone."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DISABLE,
    KQ_EV_DISPATCH,
    KQ_EV_ENABLE,
    KQ_EV_EOF,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_ABSTIME,
    KQ_NOTE_ATTRIB,
    KQ_NOTE_EXIT,
    KQ_NOTE_EXTEND,
    KQ_NOTE_FFCOPY,
    KQ_NOTE_FORK,
    KQ_NOTE_MSECONDS,
    KQ_NOTE_TRIGGER,
    KQ_NOTE_WRITE,
    kevent,
    kqueue,
)
from kqd.core.linux.knote import Knote, KnoteSnapshot
from tests.conftest import WAIT_BOUND, wait_events

Kqueue = Any  # kqd.core.kqueue, loaded lazily


@pytest.fixture
def new_kq() -> Iterator[Callable[[], Kqueue]]:
    """Makes kqueues, all closed when the test ends."""
    made: list[Kqueue] = []

    def make() -> Kqueue:
        made.append(kqueue())
        return made[-1]

    yield make
    for kq in made:
        kq.close()


def carried(kq: Kqueue, ident: int, filt: int) -> KnoteSnapshot:
    """The knote's snapshot as a store gives it back, its kqueue closed: the host went down."""
    snap = kq.snapshot(ident, filt)
    assert snap is not None
    kq.close()
    return dataclasses.replace(snap, state=json.loads(json.dumps(snap.state)))


def restored(new_kq: Callable[[], Kqueue], snap: KnoteSnapshot) -> Kqueue:
    kq = new_kq()
    kq.restore(snap)
    return kq


def with_ident(snap: KnoteSnapshot, ident: int) -> KnoteSnapshot:
    """The snapshot re-targeted at *ident* (the host re-opened the file under a new number)."""
    c = snap.change
    return dataclasses.replace(
        snap, change=kevent(ident, c.filter, c.flags, c.fflags, c.data, c.udata)
    )


def fields(ev: kevent) -> tuple[int, int, int, int]:
    return ev.ident, ev.flags, ev.fflags, ev.data


# ----------------------------------------------------------------------------- USER


def test_user_pending_trigger_and_fflags_survive(new_kq) -> None:
    kq = new_kq()
    kq.control(
        [
            kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR),
            kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER | KQ_NOTE_FFCOPY | 0x123, 42, b"one"),
            kevent(2, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_FFCOPY | 0x7),
        ],
        0,
    )
    quiet, one = kq.snapshot(2, KQ_FILTER_USER), carried(kq, 1, KQ_FILTER_USER)
    assert one.state == {"triggered": True, "fflags": 0x123, "data": 42}
    kq = new_kq()
    kq.restore(one)
    kq.restore(quiet)
    [ev] = kq.control(None, 4, 0)
    assert (*fields(ev), ev.udata) == (1, KQ_EV_CLEAR, 0x123, 42, b"one")
    assert kq.control(None, 4, 0) == [], "delivered with EV_CLEAR; the untriggered one is quiet"
    kq.control([kevent(2, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    assert [fields(ev) for ev in kq.control(None, 4, 0)] == [(2, KQ_EV_CLEAR, 0x7, 0)]


def test_disabled_and_dispatched_knotes_stay_disabled(new_kq) -> None:
    kq = new_kq()
    kq.control(
        [
            kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_DISABLE, KQ_NOTE_TRIGGER),
            kevent(2, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR | KQ_EV_DISPATCH, KQ_NOTE_TRIGGER),
        ],
        0,
    )
    assert [ev.ident for ev in kq.control(None, 4, 0)] == [2]  # dispatched: now disabled
    kq.control([kevent(2, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)  # pending while disabled
    disabled, dispatched = kq.snapshot(1, KQ_FILTER_USER), carried(kq, 2, KQ_FILTER_USER)
    assert disabled is not None and disabled.disabled and dispatched.disabled
    kq = new_kq()
    kq.restore(disabled)
    kq.restore(dispatched)
    assert kq.control(None, 4, 0) == []
    kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ENABLE) for i in (1, 2)], 0)
    assert sorted(ev.ident for ev in kq.control(None, 4, 0)) == [1, 2]


# ----------------------------------------------------------------------------- TIMER


def test_periodic_timer_counts_what_it_missed_and_keeps_its_schedule(new_kq) -> None:
    period_ms = 50
    kq = new_kq()
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD, 0, period_ms, b"tick")], 0)
    snap = carried(kq, 1, KQ_FILTER_TIMER)
    assert snap.state["period_ns"] == period_ms * 1_000_000 and snap.state["pending"] == 0
    time.sleep(3.5 * period_ms / 1000)  # the downtime: at least three deadlines pass
    kq = restored(new_kq, snap)
    [ev] = kq.control(None, 4, 0)
    assert (ev.ident, ev.udata) == (1, b"tick") and ev.data >= 3
    assert ev.flags & KQ_EV_CLEAR
    after = time.monotonic()
    [ev] = wait_events(kq)
    assert ev.data >= 1 and time.monotonic() - after < WAIT_BOUND, "the schedule goes on"


@pytest.mark.parametrize(
    ("flags", "fflags", "due"),
    [
        (KQ_EV_ONESHOT, 0, lambda: 30),
        (KQ_EV_CLEAR, KQ_NOTE_ABSTIME | KQ_NOTE_MSECONDS, lambda: time.time_ns() // 10**6 + 30),
    ],
    ids=["oneshot", "abstime"],
)
def test_timer_due_while_down_fires_once_at_restore(new_kq, flags, fflags, due) -> None:
    kq = new_kq()
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD | flags, fflags, due())], 0)
    snap = carried(kq, 1, KQ_FILTER_TIMER)
    assert snap.state["period_ns"] is None
    time.sleep(0.1)  # the downtime: the deadline passes
    kq = restored(new_kq, snap)
    [ev] = kq.control(None, 4, 0)
    assert (ev.ident, ev.data) == (1, 1)
    assert kq.control(None, 4, 0) == []
    if flags & KQ_EV_ONESHOT:
        assert kq.snapshot(1, KQ_FILTER_TIMER) is None, "a delivered oneshot is gone"
    else:
        assert kq.snapshot(1, KQ_FILTER_TIMER).state["next_wall_ns"] is None


def test_oneshot_timer_not_yet_due_waits_for_its_deadline(new_kq) -> None:
    kq = new_kq()
    kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD | KQ_EV_ONESHOT, 0, 300)], 0)
    snap = carried(kq, 1, KQ_FILTER_TIMER)
    kq = restored(new_kq, snap)
    assert kq.control(None, 4, 0) == []
    assert wait_events(kq)[0].data == 1
    assert time.time_ns() >= snap.state["next_wall_ns"]


# ----------------------------------------------------------------------------- PROC


def child_exiting_with(code: int) -> subprocess.Popen:
    """A running child that exits with *code* when its stdin closes."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; print(1, flush=True); sys.stdin.read(); sys.exit({code})",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline() == b"1\n"
    return child


def make_zombie(child: subprocess.Popen) -> None:
    """Let *child* exit and wait until it has, without reaping it."""
    assert child.stdin is not None
    child.stdin.close()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)


def proc_snapshot(new_kq, pid: int, fflags: int = KQ_NOTE_EXIT, flags: int = 0) -> KnoteSnapshot:
    kq = new_kq()
    kq.control([kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD | flags, fflags, 0, b"job")], 0)
    return carried(kq, pid, KQ_FILTER_PROC)


def test_proc_same_process_reports_its_real_exit(new_kq) -> None:
    child = child_exiting_with(3)
    snap = proc_snapshot(new_kq, child.pid)
    with open(f"/proc/{child.pid}/stat") as f:
        assert snap.state["start"] == int(f.read().rsplit(")", 1)[1].split()[19])
    kq = restored(new_kq, snap)
    assert kq.control(None, 4, 0) == []
    assert child.stdin is not None
    child.stdin.close()
    [ev] = wait_events(kq)
    assert (*fields(ev), ev.udata) == (
        child.pid,
        KQ_EV_CLEAR | KQ_EV_EOF | KQ_EV_ONESHOT,
        KQ_NOTE_EXIT,
        3 << 8,
        b"job",
    )
    assert child.wait(WAIT_BOUND) == 3


def test_proc_same_process_now_a_zombie_fires_at_once(new_kq) -> None:
    child = child_exiting_with(4)
    snap = proc_snapshot(new_kq, child.pid)
    make_zombie(child)
    [ev] = restored(new_kq, snap).control(None, 4, 0)
    assert (ev.fflags, ev.data) == (KQ_NOTE_EXIT, 4 << 8)
    child.wait(WAIT_BOUND)


def test_proc_gone_reports_an_unknown_exit(new_kq) -> None:
    child = child_exiting_with(0)
    exit_snap = proc_snapshot(new_kq, child.pid)
    fork_snap = proc_snapshot(new_kq, child.pid, KQ_NOTE_FORK)
    assert child.stdin is not None
    child.stdin.close()
    child.wait(WAIT_BOUND)  # reaped: the pid is free for anyone
    kq = restored(new_kq, exit_snap)
    [ev] = kq.control(None, 4, 0)
    assert fields(ev) == (child.pid, KQ_EV_CLEAR | KQ_EV_EOF | KQ_EV_ONESHOT, KQ_NOTE_EXIT, -1)
    assert kq.snapshot(child.pid, KQ_FILTER_PROC) is None
    kq = restored(new_kq, fork_snap)
    assert kq.control(None, 4, 0) == [], "it asked for nothing that happened: EV_DROP"
    assert kq.snapshot(child.pid, KQ_FILTER_PROC) is None


@pytest.mark.parametrize("field", ["start", "boot"])
def test_proc_another_process_under_the_pid_is_never_watched(new_kq, field: str) -> None:
    child = child_exiting_with(0)
    snap = proc_snapshot(new_kq, child.pid)
    # As if the pid had been recycled (or the machine rebooted) while the host was down.
    other = {"start": snap.state["start"] + 1, "boot": "another-boot"}[field]
    snap = dataclasses.replace(snap, state={**snap.state, field: other})
    kq = restored(new_kq, snap)
    [ev] = kq.control(None, 4, 0)
    assert (ev.flags & KQ_EV_EOF, ev.fflags, ev.data) == (KQ_EV_EOF, KQ_NOTE_EXIT, -1)
    assert kq.snapshot(child.pid, KQ_FILTER_PROC) is None, "dropped, as any exited knote"
    assert child.poll() is None, "the process under that pid runs on, unwatched"
    assert child.stdin is not None
    child.stdin.close()
    child.wait(WAIT_BOUND)


def test_proc_exit_seen_before_the_snapshot_keeps_its_status(new_kq) -> None:
    child = child_exiting_with(6)
    kq = new_kq()
    kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD | KQ_EV_DISABLE, KQ_NOTE_EXIT)], 0)
    make_zombie(child)
    assert kq.control(None, 4, 0) == []  # the exit is recorded in the disabled knote
    snap = carried(kq, child.pid, KQ_FILTER_PROC)
    assert snap.change.flags & KQ_EV_EOF and snap.disabled
    child.wait(WAIT_BOUND)  # reaped: only the snapshot knows the status now
    kq = restored(new_kq, snap)
    kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ENABLE)], 0)
    [ev] = kq.control(None, 4, 0)
    assert (ev.fflags, ev.data) == (KQ_NOTE_EXIT, 6 << 8)


_PID_REUSE = """
import json, subprocess
from kqd.core import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent, kqueue

def spawn_as(pid):
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    child = subprocess.Popen(["sleep", "60"])
    assert child.pid == pid, child.pid
    return child

first = spawn_as(5000)
kq = kqueue()
kq.control([kevent(5000, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
snap = kq.snapshot(5000, KQ_FILTER_PROC)
kq.close()
first.kill()
first.wait()
second = spawn_as(5000)  # another process, the same pid
kq = kqueue()
kq.restore(snap)
events = [(ev.flags, ev.fflags, ev.data) for ev in kq.control(None, 4, 0)]
running = second.poll() is None
second.kill()
second.wait()
print(json.dumps({"events": events, "running": running}))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("sleep") is None,
    reason="needs root and unshare(1) for a private pid namespace",
)
def test_proc_pid_reused_in_a_private_pid_namespace() -> None:
    """The real thing: a pid given to another process while the host was down."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _PID_REUSE],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    if done.returncode and done.stderr.startswith("unshare:"):
        pytest.skip(f"no private pid namespace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {
        "events": [[KQ_EV_CLEAR | KQ_EV_EOF | KQ_EV_ONESHOT, KQ_NOTE_EXIT, -1]],
        "running": True,
    }


# ----------------------------------------------------------------------------- VNODE


def vnode_snapshot(new_kq, path: Path, fflags: int, flags: int = KQ_EV_CLEAR) -> KnoteSnapshot:
    fd = os.open(path, os.O_RDONLY)
    try:
        kq = new_kq()
        kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | flags, fflags)], 0)
        return carried(kq, fd, KQ_FILTER_VNODE)
    finally:
        os.close(fd)


def restore_on(new_kq, path: Path, snap: KnoteSnapshot) -> tuple[Kqueue, int]:
    """Restore *snap* on a fresh descriptor of *path*, as the host does once it checked that
    the path still names the same inode."""
    fd = os.open(path, os.O_RDONLY)
    kq = restored(new_kq, with_ident(snap, fd))
    return kq, fd


@pytest.mark.parametrize(
    ("asked", "reported"),
    [
        (
            KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_ATTRIB,
            KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_ATTRIB,
        ),
        (KQ_NOTE_ATTRIB, KQ_NOTE_ATTRIB),
        (KQ_NOTE_WRITE, KQ_NOTE_WRITE | KQ_NOTE_EXTEND),  # a hint is recorded whole
    ],
)
def test_vnode_changes_made_while_down_are_reported(new_kq, tmp_path, asked, reported) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    snap = vnode_snapshot(new_kq, path, asked)
    with open(path, "ab") as f:
        f.write(b"more")
    path.chmod(0o600)
    kq, fd = restore_on(new_kq, path, snap)
    try:
        [ev] = kq.control(None, 4, 0)
        assert fields(ev) == (fd, KQ_EV_CLEAR, reported, 1), "data: one restart behind the notes"
        assert kq.control(None, 4, 0) == []
    finally:
        kq.close()
        os.close(fd)


def test_vnode_untouched_is_quiet_and_unreported_notes_survive(new_kq, tmp_path) -> None:
    quiet_path, fired_path = tmp_path / "quiet", tmp_path / "fired"
    quiet_path.write_bytes(b"")
    fired_path.write_bytes(b"")
    quiet = vnode_snapshot(new_kq, quiet_path, KQ_NOTE_WRITE | KQ_NOTE_ATTRIB)
    fd = os.open(fired_path, os.O_RDONLY)
    kq = new_kq()
    kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD, KQ_NOTE_WRITE)], 0)
    fired_path.write_bytes(b"x")
    assert wait_events(kq)[0].fflags == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
    fired = carried(kq, fd, KQ_FILTER_VNODE)  # without EV_CLEAR: reported at every call
    os.close(fd)
    kq, fd = restore_on(new_kq, quiet_path, quiet)
    assert kq.control(None, 4, 0) == []
    os.close(fd)
    kq, fd = restore_on(new_kq, fired_path, fired)
    [ev] = kq.control(None, 4, 0)
    assert (ev.fflags, ev.data) == (KQ_NOTE_WRITE | KQ_NOTE_EXTEND, 0), "no change since"
    os.close(fd)


# ----------------------------------------------------------------------------- all filters


def test_read_and_write_read_the_real_state_again(new_kq) -> None:
    r, w = os.pipe()
    try:
        kq = new_kq()
        kq.control([kevent(r, KQ_FILTER_READ, KQ_EV_ADD), kevent(w, KQ_FILTER_WRITE, KQ_EV_ADD)], 0)
        read, write = kq.snapshot(r, KQ_FILTER_READ), carried(kq, w, KQ_FILTER_WRITE)
        os.write(w, b"abc")
        kq = new_kq()
        kq.restore(read)
        kq.restore(write)
        got = {ev.filter: ev.data for ev in kq.control(None, 4, 0)}
        assert got[KQ_FILTER_READ] == 3 and got[KQ_FILTER_WRITE] > 0
    finally:
        os.close(r)
        os.close(w)


def test_every_filters_snapshot_is_json(new_kq, tmp_path) -> None:
    r, w = os.pipe()
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)
    try:
        kq = new_kq()
        changes = [
            kevent(r, KQ_FILTER_READ, KQ_EV_ADD),
            kevent(w, KQ_FILTER_WRITE, KQ_EV_ADD),
            kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD, KQ_NOTE_WRITE),
            kevent(os.getpid(), KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT),
            kevent(signal.SIGUSR2, KQ_FILTER_SIGNAL, KQ_EV_ADD),
            kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD, 0, 60_000),
            kevent(1, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER),
        ]
        kq.control(changes, 0)
        for change in changes:
            snap = kq.snapshot(change.ident, change.filter)
            assert snap is not None
            assert json.loads(json.dumps(snap.state)) == snap.state, change
    finally:
        os.close(fd)
        os.close(r)
        os.close(w)


def test_restore_refuses_a_knote_that_exists_or_a_descriptor_that_does_not(
    new_kq, tmp_path
) -> None:
    kq = new_kq()
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD)], 0)
    snap = kq.snapshot(1, KQ_FILTER_USER)
    with pytest.raises(OSError) as info:
        kq.restore(snap)
    assert info.value.errno == errno.EEXIST
    path = tmp_path / "f"
    path.write_bytes(b"")
    vnode = vnode_snapshot(new_kq, path, KQ_NOTE_WRITE)
    kq = new_kq()
    closed = os.open(path, os.O_RDONLY)
    os.close(closed)
    with pytest.raises(OSError) as info:
        kq.restore(with_ident(vnode, closed))
    assert info.value.errno == errno.EBADF


class Admission:
    """Admits while *limit* allows; counts what it admitted and what was released."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: set[tuple[int, int]] = set()

    def admit(self, change: kevent, existing: Knote | None) -> None:
        if len(self.held) >= self.limit:
            raise OSError(errno.EDQUOT, "over the test's limit")
        self.held.add((change.ident, change.filter))

    def released(self, kn: Knote) -> None:
        self.held.remove(kn.key)


def open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_refused_restore_leaves_nothing(new_kq, tmp_path) -> None:
    child = child_exiting_with(0)
    path = tmp_path / "f"
    path.write_bytes(b"")
    proc = proc_snapshot(new_kq, child.pid)
    vnode = vnode_snapshot(new_kq, path, KQ_NOTE_WRITE)
    fd = os.open(path, os.O_RDONLY)
    r, w = os.pipe()
    try:
        kq = new_kq()
        admission = kq.admission = Admission(limit=0)
        before = open_descriptors()
        for snap in (proc, with_ident(vnode, fd)):
            with pytest.raises(OSError) as info:
                kq.restore(snap)
            assert info.value.errno == errno.EDQUOT
            assert kq.snapshot(snap.change.ident, snap.change.filter) is None
        # Admitted, then refused by the filter (VNODE on a pipe): released again.
        admission.limit = 1
        with pytest.raises(OSError) as info:
            kq.restore(with_ident(vnode, r))
        assert info.value.errno == errno.EINVAL
        assert admission.held == set() and open_descriptors() == before
        kq.restore(proc)
        assert admission.held == {(child.pid, KQ_FILTER_PROC)}
    finally:
        for d in (fd, r, w):
            os.close(d)
        assert child.stdin is not None
        child.stdin.close()
        child.wait(WAIT_BOUND)
