"""EVFILT_PROC: any visible process, by pid, through a pidfd (plus the proc connector).

A pidfd names one process for good, so a recycled pid can never be mistaken for the process the
knote was attached to. The exit status of a process that is not our child comes from the kernel
once its parent has reaped it (PIDFD_GET_INFO, Linux >= 6.15), or from /proc/<pid>/stat while it
is a zombie and we may read it (ptrace rights: our own uid, or CAP_SYS_PTRACE); the pidfd tells
which of the two moments we are in. It polls readable when the process exits and again, a second
edge with POLLHUP, when its parent reaps it.

So when the exit edge finds the status unknown (another user's process, not reaped yet), the
knote waits for the reap edge, at most REAP_WAIT_NS (2 s), without holding up the kqueue; NOTE_EXIT
then carries the status the reap revealed. A parent that does not reap within that bound, or an
older kernel where only /proc could have told, gives NOTE_EXIT with data -1.
We never reap: the parent's wait() still gets its status.

A pidfd does not outlive its kqueue, so a knote carried across a restart (``snapshot``/
``restore``) names its process by what identifies it for good: the pid, the start time (field
22 of /proc/<pid>/stat, in clock ticks since boot) and the boot id. The start time is read once
at attach, just after the pidfd is opened, and kept only if the pidfd shows the process was not
reaped meanwhile: until then its pid cannot name another process. Restoring opens a pidfd the
same way and attaches only if the start time and boot id match; otherwise the process is gone
(it may even have left its pid to a newcomer, which the knote must never report on), and the
knote reports NOTE_EXIT with data -1 and EV_EOF, as for any exit whose status is unknowable, or
is dropped unreported if it did not ask for NOTE_EXIT. An exit seen before the snapshot is
restored with its status, without looking at the pid again.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import time
from typing import Any

from kqd.core.constants import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_NOTE_CHILD,
    KQ_NOTE_EXEC,
    KQ_NOTE_EXIT,
    KQ_NOTE_FORK,
    KQ_NOTE_TRACK,
    KQ_NOTE_TRACKERR,
)
from kqd.core.kevent import kevent
from kqd.core.linux import proc_connector, syscalls
from kqd.core.linux.fdstate import poll_now
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote
from kqd.core.linux.kqueue import TimerHandle

REAP_WAIT_NS = 2_000_000_000
_NEEDS_CONNECTOR = KQ_NOTE_FORK | KQ_NOTE_EXEC | KQ_NOTE_TRACK
_STAT_START_TIME_FIELD = 22
_STAT_EXIT_CODE_FIELD = 52


_CAP_SYS_PTRACE = 19


@functools.cache
def _has_cap_sys_ptrace() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_PTRACE & 1)
    return False


def _may_read_exit_code(pid: int) -> bool:
    """/proc/<pid>/stat shows a 0 exit code to readers without ptrace rights: who has them?
    (CAP_SYS_PTRACE, or our uid and gid in all of the process's real/effective/saved ids.)"""
    if _has_cap_sys_ptrace():
        return True
    ids: dict[str, list[int]] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Uid", "Gid"):
                    ids[key] = [int(x) for x in value.split()[:3]]
    except OSError:
        return False
    uid, gid = os.geteuid(), os.getegid()
    return ids.get("Uid", [-1]) == [uid] * 3 and ids.get("Gid", [-1]) == [gid] * 3


def _stat_field(pid: int, number: int) -> int | None:
    """Field *number* (counted from 1, as in proc(5)) of /proc/<pid>/stat; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (comm) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[number - 3])
    except (IndexError, ValueError):
        return None


def _zombie_exit_code(pid: int) -> int | None:
    if not _may_read_exit_code(pid):
        return None
    return _stat_field(pid, _STAT_EXIT_CODE_FIELD)


def process_start_time(pid: int) -> int | None:
    """When process *pid* started (field 22 of /proc/<pid>/stat, clock ticks since boot); with
    the pid and the boot id, what identifies it for good. None if there is no such process."""
    return _stat_field(pid, _STAT_START_TIME_FIELD)


@functools.cache
def boot_id() -> str:
    """This boot's id: a start time only identifies a process together with it."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def exit_status(pidfd: int, pid: int) -> int | None:
    """The wait(2) status of the exited process behind *pidfd*; None while it cannot be known."""
    status = syscalls.pidfd_exit_code(pidfd)
    if status is not None:
        return status
    status = _zombie_exit_code(pid)
    # Until the process is reaped its pid cannot be reused, so /proc/<pid> was this process.
    if status is not None and not poll_now(pidfd) & select.POLLHUP:
        return status
    return syscalls.pidfd_exit_code(pidfd)


class ExitHint:
    __slots__ = ("status",)

    def __init__(self, status: int) -> None:
        self.status = status


class ProcState:
    __slots__ = ("connector", "exited", "give_up", "pidfd", "start")

    def __init__(self, pidfd: int | None, start: int | None) -> None:
        self.pidfd = pidfd  # None once the exit is reported
        self.start = start  # the process's start time, None if it was reaped before it was read
        self.exited = False
        self.connector: proc_connector.Subscription | None = None
        self.give_up: TimerHandle | None = None  # the bound on waiting for the reap


class _PidfdSource:
    def __init__(self, flt: ProcFilter, kn: Knote) -> None:
        self.flt = flt
        self.kn = kn

    def on_ready(self, events: int) -> None:
        connector = self.kn.hook.connector
        if connector is None:
            self.flt.exited(self.kn)
            return
        # The connector reported this process's forks and execs before it exited, but its
        # socket may be read after the pidfd: read it first, and handle the exit after them.
        connector.connector.pump()
        self.flt.kq.post(lambda: self.flt.exited(self.kn))

    def on_stale(self) -> None:
        pass


class ProcFilter(Filter):
    """NOTE_EXIT (data = wait status, EV_EOF, then the knote is gone), NOTE_FORK, NOTE_EXEC,
    NOTE_TRACK (children get the same knote, and a NOTE_CHILD event with data = parent pid)."""

    def attach(self, kn: Knote) -> None:
        if kn.sfflags & _NEEDS_CONNECTOR:
            proc_connector.ProcConnector.shared()
        self._watch(kn, self._open(kn))

    def detach(self, kn: Knote) -> None:
        state: ProcState | None = kn.hook
        if state is not None:
            self._release(state)

    def snapshot(self, kn: Knote) -> dict[str, Any]:
        state: ProcState = kn.hook
        return {"start": state.start, "boot": boot_id(), "fflags": kn.fflags, "data": kn.data}

    def restore(self, kn: Knote, state: dict[str, Any]) -> None:
        """Attach to the process the snapshot was taken of if it is still there; otherwise
        report its exit with an unknown status (see the module doc)."""
        kn.fflags, kn.data = state["fflags"], state["data"]
        status = kn.data  # with EV_EOF the exit was seen: data is its status if asked for
        if not kn.flags & KQ_EV_EOF:
            proc = self._find(kn, state["start"]) if state["boot"] == boot_id() else None
            if proc is not None:
                self._watch(kn, proc)
                return
            status = -1
        kn.flags |= KQ_EV_CLEAR
        kn.hook = ProcState(None, state["start"])
        kn.hook.exited = True
        kn.fflags &= ~KQ_NOTE_EXIT  # the exit hint sets it again, with its data
        self.kq.activate(kn, ExitHint(status))

    def _find(self, kn: Knote, start: int | None) -> ProcState | None:
        """The process *kn* names, if it is the one that started at *start*."""
        try:
            proc = self._open(kn)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EINVAL):  # EINVAL: a thread's id now
                raise
            return None
        if proc.start is not None and proc.start == start:
            return proc
        self._release(proc)
        return None

    def _open(self, kn: Knote) -> ProcState:
        """A pidfd for the process *kn* names, and its start time."""
        if kn.ident > 0x7FFFFFFF:
            raise OSError(errno.ESRCH, f"no process {kn.ident}")
        pidfd = os.pidfd_open(kn.ident)
        start = process_start_time(kn.ident)
        # Reaped before the read: the pid may be another process's already.
        if poll_now(pidfd) & select.POLLHUP:
            start = None
        return ProcState(pidfd, start)

    def _watch(self, kn: Knote, state: ProcState) -> None:
        """Follow the process behind *state*'s pidfd; closes it if that fails."""
        assert state.pidfd is not None
        kn.flags |= KQ_EV_CLEAR
        kn.hook = state
        try:
            self.kq.add_source(state.pidfd, select.EPOLLIN | select.EPOLLET, _PidfdSource(self, kn))
            self._follow_connector(kn)
        except BaseException:
            self._release(state)
            raise
        if poll_now(state.pidfd) & select.POLLIN:
            self.exited(kn)  # a zombie: report the exit at once

    def touch(self, kn: Knote, change: kevent) -> None:
        if change.fflags & _NEEDS_CONNECTOR:
            proc_connector.ProcConnector.shared()
        super().touch(kn, change)
        self._follow_connector(kn)

    def event(self, kn: Knote, hint: object) -> bool:
        if isinstance(hint, ExitHint):
            if kn.sfflags & KQ_NOTE_EXIT:
                kn.fflags |= KQ_NOTE_EXIT
                kn.data = hint.status
            kn.flags |= KQ_EV_EOF | KQ_EV_ONESHOT
            if kn.fflags == 0:
                kn.drop_unreported = True
            return True
        if isinstance(hint, int) and kn.sfflags & hint:
            kn.fflags |= hint
        return kn.fflags != 0

    def exited(self, kn: Knote, *, waited: bool = False) -> None:
        """The pidfd polled readable: the process exited, or was reaped since. Reports NOTE_EXIT
        unless the reap, still to come, is what will tell the status (see the module doc)."""
        state: ProcState = kn.hook
        if state.pidfd is None:
            return
        state.exited = True
        reaped = poll_now(state.pidfd) & select.POLLHUP  # before the status: a reap may come
        status = exit_status(state.pidfd, kn.ident)
        if status is None and not (reaped or waited) and syscalls.pidfd_exit_code_supported():
            if state.give_up is None:
                state.give_up = self.kq.call_at(
                    time.monotonic_ns() + REAP_WAIT_NS, lambda _now: self.exited(kn, waited=True)
                )
            return
        self._release(state)
        self.kq.activate(kn, ExitHint(-1 if status is None else status))

    def _release(self, state: ProcState) -> None:
        if state.give_up is not None:
            state.give_up.cancel()
            state.give_up = None
        if state.connector is not None:
            state.connector.cancel()
            state.connector = None
        if state.pidfd is not None:
            self.kq.remove_source(state.pidfd)
            os.close(state.pidfd)
            state.pidfd = None

    def _follow_connector(self, kn: Knote) -> None:
        state: ProcState = kn.hook
        wanted = bool(kn.sfflags & _NEEDS_CONNECTOR) and not state.exited
        if wanted and state.connector is None:
            connector = proc_connector.ProcConnector.shared()
            state.connector = connector.subscribe(
                kn.ident, self.kq, lambda what, child: self._connector_event(kn, what, child)
            )
        elif not wanted and state.connector is not None:
            state.connector.cancel()
            state.connector = None

    def _connector_event(self, kn: Knote, what: str, child: int) -> None:
        if kn.dropped:
            return
        if what == proc_connector.EXEC:
            self.kq.activate(kn, KQ_NOTE_EXEC)
        elif what == proc_connector.LOST:
            if kn.sfflags & KQ_NOTE_TRACK:
                kn.fflags |= KQ_NOTE_TRACKERR
                self.kq.activate(kn, None)
        else:
            if kn.sfflags & KQ_NOTE_TRACK:
                self._track(kn, child)
            self.kq.activate(kn, KQ_NOTE_FORK)

    def _track(self, parent: Knote, child: int) -> None:
        """FreeBSD's knote_fork(): a NOTE_CHILD notice, and a knote that tracks the child."""
        notice = Knote(
            ident=child,
            filter=KQ_FILTER_PROC,
            flags=parent.flags | KQ_EV_ONESHOT,
            sfflags=parent.sfflags & ~KQ_NOTE_EXIT,
            sdata=parent.ident,
            udata=parent.udata,
            fop=self,
            fflags=KQ_NOTE_CHILD,
            data=parent.ident,
        )
        self.kq.enqueue_anonymous(notice)
        error = self.kq.register(
            kevent(
                child,
                KQ_FILTER_PROC,
                parent.flags | KQ_EV_ADD,
                parent.sfflags,
                parent.ident,
                parent.udata,
            )
        )
        if error:
            parent.fflags |= KQ_NOTE_TRACKERR
