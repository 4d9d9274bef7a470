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

import asyncio
import contextlib
import errno
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

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
from kqd.daemon.readiness import Readiness

FD_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE, KQ_FILTER_VNODE)
_NOT_A_DESCRIPTOR = 2**62


ConnectTarget = str | tuple[Any, ...]
_ADDRESS_FORMS = "give host:port (a port of 0..65535) or unix:/path"
_SUN_PATH_MAX = 107  # bytes of a Unix socket path (sockaddr_un.sun_path, NUL-terminated)


async def connection_target(address: str) -> tuple[socket.AddressFamily, ConnectTarget]:
    """What to connect to for *address* (``host:port``, ``[v6]:port`` or ``unix:/path``): the
    family and a target ``connect()`` takes without resolving. A host name is resolved here,
    in a worker thread, so a slow resolver holds up only this call. ValueError, saying what is
    wrong, for anything else."""
    if "\x00" in address:
        raise ValueError(f"address {address!r} contains a NUL byte; {_ADDRESS_FORMS}")
    if address.startswith("unix:"):
        path = address.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ValueError(f"address {address!r} has no path; give unix:/path")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(
                f"address {address!r}: a Unix socket path holds at most {_SUN_PATH_MAX} bytes"
            )
        return socket.AF_UNIX, path
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"address {address!r} is not usable; {_ADDRESS_FORMS}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, int(port), family=family, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ValueError(f"cannot resolve {address!r}: {reason}; check the host name") from None
    return family, infos[0][4]


class QueueClosedError(Exception):
    """The queue ended while a call was using it; the message says why."""


class RemoteQueue:
    """What a client's queue is on the daemon's side (see the module docstring)."""

    def __init__(self, lease: float) -> None:
        self.queue_id = secrets.token_urlsafe(24)  # 192 random bits
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
        self.descriptors.clear()
        self.peer_fds.clear()

    def check_open(self) -> None:
        if self.closed_because is not None:
            raise QueueClosedError(self.closed_because)

    # ------------------------------------------------------------------ descriptors

    def open_path(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.descriptors.add(fd)
        return fd

    def open_peer_fd(self, pid: int, target_fd: int) -> int:
        try:
            pidfd = os.pidfd_open(pid)
            try:
                fd = syscalls.pidfd_getfd(pidfd, target_fd)
            finally:
                os.close(pidfd)
        except OSError as exc:
            what = f"descriptor {target_fd} of process {pid}"
            raise OSError(exc.errno, exc.strerror, what) from None
        self.descriptors.add(fd)
        self.peer_fds[fd] = (pid, target_fd)
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

    def open_connection(self, family: socket.AddressFamily, target: ConnectTarget) -> int:
        """Start a non-blocking connect to *target* (from ``connection_target``: a Unix path
        or a numeric address, so nothing is resolved here, in the event loop)."""
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect_ex(target)
        except BaseException:
            sock.close()
            raise
        fd = sock.detach()
        self.descriptors.add(fd)
        return fd

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
                self._readiness.wake()  # the other streams of this queue have news too
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._readiness.wait(remaining)
