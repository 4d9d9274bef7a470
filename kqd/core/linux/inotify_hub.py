"""One inotify instance for the whole process, shared by every kqueue and knote.

Linux allows 128 inotify instances per user (linux-facts.md), so an instance per knote, or even
per kqueue, would cap a daemon at a few dozen clients. Watches are per inode and free of the fd
limit, so one instance serves everything: a watch's mask only ever grows (IN_MASK_ADD) while
subscribers share it, and each subscriber filters the events by its own mask. The watch is
removed when its last subscriber leaves.

The descriptor is a SharedDescriptor: whichever kqueue sees it readable reads every event and
posts each subscriber's share to that subscriber's kqueue. Overflow (IN_Q_OVERFLOW) is posted to
every subscriber: events were lost, never silently.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import inotify_simple

from kqd.core.linux.process_wide import ProcessWide
from kqd.core.linux.shared_fd import SharedDescriptor

if TYPE_CHECKING:
    from kqd.core.linux.kqueue import Kqueue


class InotifyEvent(Protocol):
    """What inotify_simple reads: one inotify event."""

    wd: int
    mask: int
    cookie: int
    name: str


# What a subscriber receives: the events of one read for its inode; None means overflow.
Callback = Callable[[list[InotifyEvent] | None], None]


class Subscription:
    """One subscriber's interest in one inode."""

    __slots__ = ("active", "callback", "hub", "kq", "mask", "wd")

    def __init__(self, hub: InotifyHub, wd: int, mask: int, kq: Kqueue, callback: Callback):
        self.hub = hub
        self.wd = wd
        self.mask = mask
        self.kq = kq
        self.callback = callback
        self.active = True

    def widen(self, fd: int, mask: int) -> None:
        """Take *mask* as this subscriber's interest from now on (EV_ADD changed the notes)."""
        self.hub.rewatch(self, fd, mask)

    def cancel(self) -> None:
        self.hub.unsubscribe(self)

    def deliver(self, batch: list[InotifyEvent] | None) -> None:
        """Run in the subscriber's kqueue: hand over *batch* unless cancelled meanwhile."""
        if self.active:
            self.callback(batch)


class InotifyHub(ProcessWide):
    IN_ACCESS = int(inotify_simple.flags.ACCESS)
    IN_MODIFY = int(inotify_simple.flags.MODIFY)
    IN_ATTRIB = int(inotify_simple.flags.ATTRIB)
    IN_CLOSE_WRITE = int(inotify_simple.flags.CLOSE_WRITE)
    IN_CLOSE_NOWRITE = int(inotify_simple.flags.CLOSE_NOWRITE)
    IN_OPEN = int(inotify_simple.flags.OPEN)
    IN_MOVED_FROM = int(inotify_simple.flags.MOVED_FROM)
    IN_MOVED_TO = int(inotify_simple.flags.MOVED_TO)
    IN_CREATE = int(inotify_simple.flags.CREATE)
    IN_DELETE = int(inotify_simple.flags.DELETE)
    IN_DELETE_SELF = int(inotify_simple.flags.DELETE_SELF)
    IN_MOVE_SELF = int(inotify_simple.flags.MOVE_SELF)
    IN_UNMOUNT = int(inotify_simple.flags.UNMOUNT)
    IN_Q_OVERFLOW = int(inotify_simple.flags.Q_OVERFLOW)
    IN_IGNORED = int(inotify_simple.flags.IGNORED)
    IN_ISDIR = int(inotify_simple.flags.ISDIR)
    IN_MASK_ADD = int(inotify_simple.flags.MASK_ADD)

    def __init__(self) -> None:
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._lock = threading.Lock()
        self._by_wd: dict[int, list[Subscription]] = defaultdict(list)
        self._shared_fd = SharedDescriptor(self._inotify.fileno(), self.pump)

    def subscribe(self, fd: int, mask: int, kq: Kqueue, callback: Callback) -> Subscription:
        """Watch the inode behind *fd* (any descriptor, even of an unlinked file)."""
        with self._lock:
            wd = self._add_watch(fd, mask)
            sub = Subscription(self, wd, mask, kq, callback)
            self._by_wd[wd].append(sub)
        self._shared_fd.join(kq)
        return sub

    def rewatch(self, sub: Subscription, fd: int, mask: int) -> None:
        with self._lock:
            self._add_watch(fd, mask)
            sub.mask = mask

    def unsubscribe(self, sub: Subscription) -> None:
        if not sub.active:
            return
        sub.active = False
        with self._lock:
            subs = self._by_wd.get(sub.wd, [])
            if sub in subs:
                subs.remove(sub)
            if not subs and sub.wd in self._by_wd:
                del self._by_wd[sub.wd]
                # OSError: the kernel removed it already (IN_IGNORED on its way).
                with contextlib.suppress(OSError):
                    self._inotify.rm_watch(sub.wd)
        self._shared_fd.leave(sub.kq)

    def pump(self) -> None:
        """Read every queued event and post each subscriber's share to its kqueue."""
        with self._lock:
            try:
                events = list(self._inotify.read(timeout=0))
            except BlockingIOError:
                return
            grouped: dict[int, list[InotifyEvent]] = defaultdict(list)
            overflow = False
            for event in events:
                if event.mask & self.IN_Q_OVERFLOW:
                    overflow = True
                else:
                    grouped[event.wd].append(event)
            deliveries: list[tuple[Subscription, list[InotifyEvent] | None]] = []
            if overflow:
                deliveries += [(sub, None) for subs in self._by_wd.values() for sub in subs]
            for wd, batch in grouped.items():
                for sub in self._by_wd.get(wd, []):
                    mine = [e for e in batch if e.mask & (sub.mask | self.IN_IGNORED)]
                    if mine:
                        deliveries.append((sub, mine))
                if any(e.mask & self.IN_IGNORED for e in batch):
                    self._by_wd.pop(wd, None)
        for sub, share in deliveries:
            sub.kq.post(functools.partial(sub.deliver, share))

    def _add_watch(self, fd: int, mask: int) -> int:
        return self._inotify.add_watch(f"/proc/self/fd/{fd}", mask | self.IN_MASK_ADD)
