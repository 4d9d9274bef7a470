"""The kernel's process events connector (netlink), for NOTE_FORK, NOTE_EXEC and NOTE_TRACK.

pidfds tell when a process exits, but nothing else. The proc connector multicasts every fork,
exec and exit on the machine; one socket per process (a SharedDescriptor) is filtered down to
the pids some knote watches. It only works from the initial pid namespace, and the kernel drops
messages when the socket's buffer overflows (ENOBUFS): subscribers are then told that events
were lost. Where the connector cannot be opened, ``shared()`` raises ENOTSUP.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Self

from kqd.core.linux.process_wide import ProcessWide
from kqd.core.linux.shared_fd import SharedDescriptor

if TYPE_CHECKING:
    from kqd.core.linux.kqueue import Kqueue

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_NLMSG_DONE = 3
_PROC_CN_MCAST_LISTEN = 1
_PROC_EVENT_FORK = 0x00000001
_PROC_EVENT_EXEC = 0x00000002
_NLMSGHDR = struct.Struct("=IHHII")
_CN_MSG = struct.Struct("=IIIIHH")
_EVENT_HEADER = struct.Struct("=IIQ")
_PIDS = struct.Struct("=iiii")

FORK = "fork"
EXEC = "exec"
LOST = "lost"
# callback(kind, child_pid): kind is FORK (with the child), EXEC or LOST.
Callback = Callable[[str, int], None]


class Subscription:
    __slots__ = ("active", "callback", "connector", "kq", "pid", "since")

    def __init__(self, connector: ProcConnector, pid: int, kq: Kqueue, callback: Callback):
        self.connector = connector
        self.pid = pid
        self.kq = kq
        self.callback = callback
        self.active = True
        # Messages are read late: one stamped before the subscription is about the past.
        self.since = time.monotonic_ns()

    def cancel(self) -> None:
        self.connector.unsubscribe(self)

    def deliver(self, what: str, child: int) -> None:
        """Run in the subscriber's kqueue: report unless cancelled meanwhile."""
        if self.active:
            self.callback(what, child)


class ProcConnector(ProcessWide):
    _failure: ClassVar[OSError | None] = None

    @classmethod
    def shared(cls) -> Self:
        """The process's connector; OSError(ENOTSUP) where the kernel will not provide one."""
        if cls._failure is not None:
            raise cls._failure
        try:
            return super().shared()
        except OSError as exc:
            cls._failure = OSError(
                errno.ENOTSUP,
                f"NOTE_FORK/NOTE_EXEC/NOTE_TRACK need the proc connector, which is not available "
                f"here ({exc.strerror}; it needs the initial pid namespace); NOTE_EXIT works "
                "without it",
            )
            raise cls._failure from None

    def __init__(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
        try:
            sock.bind((0, _CN_IDX_PROC))
            op = struct.pack("=I", _PROC_CN_MCAST_LISTEN)
            cn = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, 0, len(op), 0) + op
            sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(cn), _NLMSG_DONE, 0, 0, os.getpid()) + cn)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._lock = threading.Lock()
        self._by_pid: dict[int, list[Subscription]] = defaultdict(list)
        self._shared_fd = SharedDescriptor(sock.fileno(), self.pump)
        self.drops = 0  # receive buffer overflows (ENOBUFS): messages the kernel dropped

    def subscribe(self, pid: int, kq: Kqueue, callback: Callback) -> Subscription:
        sub = Subscription(self, pid, kq, callback)
        with self._lock:
            self._by_pid[pid].append(sub)
        self._shared_fd.join(kq)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if not sub.active:
            return
        sub.active = False
        with self._lock:
            subs = self._by_pid.get(sub.pid, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self._by_pid.pop(sub.pid, None)
        self._shared_fd.leave(sub.kq)

    def pump(self) -> None:
        deliveries: list[tuple[Subscription, str, int]] = []
        with self._lock:
            while True:
                try:
                    data = self._sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.drops += 1
                    deliveries += [(s, LOST, 0) for subs in self._by_pid.values() for s in subs]
                    continue
                for what, pid, child, stamp in self._parse(data):
                    deliveries += [
                        (s, what, child) for s in self._by_pid.get(pid, []) if stamp >= s.since
                    ]
        for sub, what, child in deliveries:
            sub.kq.post(functools.partial(sub.deliver, what, child))

    @staticmethod
    def _parse(data: bytes) -> list[tuple[str, int, int, int]]:
        """(kind, watched pid, child pid, CLOCK_MONOTONIC ns) for each process-level fork and
        exec in *data*."""
        out = []
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length = _NLMSGHDR.unpack_from(data, offset)[0]
            body = offset + _NLMSGHDR.size + _CN_MSG.size
            if length < _NLMSGHDR.size or body + _EVENT_HEADER.size > len(data):
                break
            what, _cpu, stamp = _EVENT_HEADER.unpack_from(data, body)
            pids = body + _EVENT_HEADER.size
            if what == _PROC_EVENT_FORK and pids + _PIDS.size <= len(data):
                _ppid, parent_tgid, child_pid, child_tgid = _PIDS.unpack_from(data, pids)
                if child_pid == child_tgid:  # a new process, not a new thread
                    out.append((FORK, parent_tgid, child_tgid, stamp))
            elif what == _PROC_EVENT_EXEC and pids + 8 <= len(data):
                _pid, tgid = struct.unpack_from("=ii", data, pids)
                out.append((EXEC, tgid, 0, stamp))
            offset += (length + 3) & ~3
        return out
