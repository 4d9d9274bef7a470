"""A remote queue: one core kqueue, its own descriptor table, and a replayable delivery log.

Events a Wait stream takes from the core are numbered and kept (DeliveryLog), so a stream that
broke resumes after the last number it received and gets exactly what followed, including what
was sent but never arrived. Every Wait stream reads *through the log*: whichever stream collects
events from the core records them first, and each stream then sends the log from its own
position. So two streams on one queue (typically a client's new stream and the server side of
the connection it just dropped, not yet torn down) each see every number, in order: none of them
can take events the other then never sees.

A queue is *in use* while any call or stream is running on it: the lease counts only idle time,
so a call that waits longer than the lease keeps its queue. When the queue ends (CloseQueue, an
idle lease, shutdown) every call waiting on it is woken at once and told why (QueueClosedError).
Descriptor idents are confined to the queue's own table.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Iterator

from kqd.core import (
    KQ_EV_DELETE,
    KQ_EV_RECEIPT,
    KQ_FILTER_READ,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    kevent,
    kqueue,
)
from kqd.core.linux import syscalls
from kqd.daemon.delivery_log import DeliveryLog
from kqd.daemon.metrics_delivery import delivery
from kqd.daemon.quotas import Usage
from kqd.daemon.readiness import Readiness

FD_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE, KQ_FILTER_VNODE)
_NOT_A_DESCRIPTOR = 2**62


class QueueClosedError(Exception):
    """The queue ended while a call was using it; the message says why."""


class RemoteQueue:
    """What a client's queue is on the daemon's side (see the module docstring)."""

    # Descriptors a queue holds besides its table: the kqueue's epoll, eventfd and timerfd.
    OWN_DESCRIPTORS = 3

    def __init__(self, lease: float, owner: str, usage: Usage) -> None:
        """A queue of principal *owner*, whose *usage* has been charged for the queue and
        OWN_DESCRIPTORS; close() gives that back, with the table's descriptors."""
        self.queue_id = secrets.token_urlsafe(24)  # 192 random bits
        self.owner = owner
        self.usage = usage
        self.kq = kqueue()
        self.lease = lease
        self.descriptors: set[int] = set()
        # Duplicates of other processes' descriptors: our fd -> (pid, their fd).
        self.peer_fds: dict[int, tuple[int, int]] = {}
        self.log = DeliveryLog()
        self.users = 0  # calls and streams running on the queue now
        self.closed_because: str | None = None
        self.last_seen = time.monotonic()
        self._readiness = Readiness(self.kq.fileno())

    @contextlib.contextmanager
    def in_use(self) -> Iterator[RemoteQueue]:
        """Hold the queue for one call or stream: its lease does not run meanwhile."""
        self.users += 1
        try:
            yield self
        finally:
            self.users -= 1
            self.last_seen = time.monotonic()

    def expired(self, now: float) -> bool:
        return self.users == 0 and now - self.last_seen > self.lease

    def close(self, because: str) -> None:
        """End the queue: wake every call waiting on it (they fail with *because*), then
        release the kqueue and every descriptor of its table. A second close does nothing."""
        if self.closed_because is not None:
            return
        self.closed_because = because
        self._readiness.wake()
        self.kq.close()
        for fd in self.descriptors:
            os.close(fd)
        self.usage.release("descriptors", len(self.descriptors))
        self.usage.release("queues", 1)
        self.usage.release_daemon_fds(self.OWN_DESCRIPTORS)
        self.descriptors.clear()
        self.peer_fds.clear()

    def check_open(self) -> None:
        if self.closed_because is not None:
            raise QueueClosedError(self.closed_because)

    # ------------------------------------------------------------------ descriptors

    def adopt(self, fd: int, peer: tuple[int, int] | None = None) -> int:
        """Take *fd* into the queue's table (its "descriptors" quota is already charged);
        *peer*: (pid, fd) when it duplicates another process's descriptor."""
        self.descriptors.add(fd)
        if peer is not None:
            self.peer_fds[fd] = peer
        return fd

    def release_abandoned_peer_fds(self) -> list[int]:
        """Close our duplicates of descriptors their owner closed, replaced or took to its
        exit: a duplicate keeps a socket open, so holding on would hide the close from the
        peer. Returns the descriptors closed."""
        me = os.getpid()
        gone = []
        for fd, (pid, their_fd) in list(self.peer_fds.items()):
            try:
                still_shared = syscalls.same_file_description(pid, their_fd, me, fd)
            except OSError as exc:
                # EBADF/ESRCH: their descriptor or the process is gone. EPERM/ENOSYS: kcmp is
                # forbidden here (a container without CAP_SYS_PTRACE): keep the duplicate.
                still_shared = exc.errno not in (errno.EBADF, errno.ESRCH)
            if not still_shared:
                self.close_descriptor(fd)
                gone.append(fd)
        return gone

    def close_descriptor(self, fd: int) -> None:
        """Close *fd* of the queue's table, dropping its knotes first (as close(2) does)."""
        self.kq.control(
            [kevent(fd, filt, KQ_EV_DELETE | KQ_EV_RECEIPT) for filt in FD_FILTERS],
            len(FD_FILTERS),
            0,
        )
        self.descriptors.remove(fd)
        self.peer_fds.pop(fd, None)
        os.close(fd)
        self.usage.release("descriptors", 1)

    # ------------------------------------------------------------------ events

    def confine(self, changes: list[kevent]) -> tuple[list[kevent], dict[int, int]]:
        """Descriptor idents name the queue's own table, never the daemon's other descriptors:
        a foreign one is swapped for an ident no descriptor can have, so the core answers
        EBADF at its place in the changelist; the map gives the original idents back."""
        confined, restore = [], {}
        for index, change in enumerate(changes):
            if change.filter in FD_FILTERS and change.ident not in self.descriptors:
                foreign = _NOT_A_DESCRIPTOR + index
                restore[foreign] = change.ident
                change = kevent(
                    foreign, change.filter, change.flags, change.fflags, change.data, change.udata
                )
            confined.append(change)
        return confined, restore

    def control_now(self, changes: list[kevent], max_events: int) -> list[kevent]:
        """The core's control() with a zero timeout, confined to the queue's descriptors."""
        self.check_open()
        confined, restore = self.confine(changes)
        events = self.kq.control(confined, max_events, 0)
        for ev in events:
            ev.ident = restore.get(ev.ident, ev.ident)
        return events

    async def control(
        self, changes: list[kevent], max_events: int, timeout: float | None
    ) -> list[kevent]:
        """kevent(2) in one round trip, without blocking the event loop."""
        events = self.control_now(changes, max_events)
        if events or max_events == 0 or timeout == 0:
            return events
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            await self._readiness.wait(remaining)
            self.check_open()
            events = self.kq.control(None, max_events, 0)
            if events:
                return events

    async def next_batch(
        self, after: int, max_batch: int, heartbeat: float
    ) -> list[tuple[int, kevent]]:
        """Events after sequence *after*, from the log; [] when *heartbeat* seconds pass with
        nothing new. The log is consulted at every turn, not only at the start: another stream
        of this queue may have collected (and numbered) events meanwhile."""
        deadline = time.monotonic() + heartbeat
        while True:
            self.check_open()
            if after < self.log.last_sequence:
                return self.log.after(after, max_batch)
            fresh = self.kq.control(None, max_batch, 0)
            if fresh:
                self.log.record(fresh)
                delivery.collected(self, len(fresh))
                self._readiness.wake()  # the other streams of this queue have news too
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._readiness.wait(remaining)
