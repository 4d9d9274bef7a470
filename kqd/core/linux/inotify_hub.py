"""One inotify instance for the whole process, shared by every kqueue and knote.

Linux allows 128 inotify instances per user (linux-facts.md), so an instance per knote, or even
per kqueue, would cap a daemon at a few dozen clients. Watches are per inode and free of the fd
limit, so one instance serves everything: a watch's mask only ever grows (IN_MASK_ADD) while
subscribers share it, and each subscriber filters the events by its own mask. The watch is
removed when its last subscriber leaves.

The descriptor is a SharedDescriptor: whichever kqueue sees it readable reads every event and
hands each subscriber its share. Two kernel facts shape that hand-over:

* The reading kqueue is often not the subscriber's, and a kqueue nobody reads never runs what is
  posted to it. So, as a knote merges events into one pending report, each subscription merges
  what arrived into one bounded ``Arrivals`` (the OR of the inode's own events, the distinct kinds
  of directory entry changes, whether the queue overflowed) and posts to its kqueue only when no
  delivery is pending already. Memory stays bounded by the number of subscriptions, whatever the
  event rate.
* A watched directory also gets every event of its entries, with the entry's name: IN_ATTRIB,
  IN_MODIFY, IN_OPEN, IN_ACCESS, IN_CLOSE_* of a file inside it. Only the entry changes
  themselves (IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO) concern the directory; the rest
  is dropped here. Both halves of a rename carry one cookie, so a pair seen in one read is a
  rename within the directory.

An overflow (IN_Q_OVERFLOW: the kernel queue was full and events were dropped) reaches every
subscriber as ``Arrivals.overflow``, to look at the object again; ``overflows`` counts them.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class Arrivals:
    """What arrived for one subscriber since its last delivery."""

    mask: int = 0  # the OR of the inode's own events
    # Directory entry changes: (event mask with IN_ISDIR, both rename halves in one read).
    entries: set[tuple[int, bool]] = field(default_factory=set)
    overflow: bool = False


Callback = Callable[[Arrivals], None]


class Subscription:
    """One subscriber's interest in one inode."""

    __slots__ = ("active", "arrivals", "callback", "hub", "kq", "mask", "wd")

    def __init__(self, hub: InotifyHub, wd: int, mask: int, kq: Kqueue, callback: Callback):
        self.hub = hub
        self.wd = wd
        self.mask = mask
        self.kq = kq
        self.callback = callback
        self.active = True
        self.arrivals: Arrivals | None = None  # not None while a delivery is posted

    def widen(self, fd: int, mask: int) -> None:
        """Take *mask* as this subscriber's interest from now on (EV_ADD changed the notes)."""
        self.hub.rewatch(self, fd, mask)

    def cancel(self) -> None:
        self.hub.unsubscribe(self)

    def deliver(self) -> None:
        """Run in the subscriber's kqueue: hand over what arrived unless cancelled meanwhile."""
        arrivals = self.hub.take(self)
        if self.active and arrivals is not None:
            self.callback(arrivals)


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
    IN_MOVED = IN_MOVED_FROM | IN_MOVED_TO
    ENTRY_CHANGES = IN_CREATE | IN_DELETE | IN_MOVED

    def __init__(self) -> None:
        self._inotify = inotify_simple.INotify(nonblocking=True)
        self._lock = threading.Lock()
        self._by_wd: dict[int, list[Subscription]] = defaultdict(list)
        self._shared_fd = SharedDescriptor(self._inotify.fileno(), self.pump)
        self.overflows = 0

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

    def take(self, sub: Subscription) -> Arrivals | None:
        """What arrived for *sub* since its last delivery; the next arrival posts again."""
        with self._lock:
            arrivals, sub.arrivals = sub.arrivals, None
        return arrivals

    def pump(self) -> None:
        """Read every queued event, merge each subscriber's share into its pending arrivals,
        and post a delivery to the subscribers that had none pending."""
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
            posts: list[Subscription] = []
            if overflow:
                self.overflows += 1
                for subs in self._by_wd.values():
                    for sub in subs:
                        self._arrivals_of(sub, posts).overflow = True
            for wd, batch in grouped.items():
                moves = Counter(e.cookie for e in batch if e.mask & self.IN_MOVED)
                for sub in self._by_wd.get(wd, []):
                    self._merge(sub, batch, moves, posts)
                if any(e.mask & self.IN_IGNORED for e in batch):
                    self._by_wd.pop(wd, None)
        for sub in posts:
            sub.kq.post(sub.deliver)

    def _merge(
        self,
        sub: Subscription,
        batch: list[InotifyEvent],
        moves: Counter[int],
        posts: list[Subscription],
    ) -> None:
        wanted = sub.mask | self.IN_IGNORED
        for event in batch:
            mask = event.mask & wanted
            if not mask or (event.name and not mask & self.ENTRY_CHANGES):
                continue  # not asked for, or about an entry of the directory, not the directory
            arrivals = self._arrivals_of(sub, posts)
            if event.name:
                kind = event.mask & (self.ENTRY_CHANGES | self.IN_ISDIR)
                arrivals.entries.add((kind, moves[event.cookie] > 1))
            else:
                arrivals.mask |= mask

    @staticmethod
    def _arrivals_of(sub: Subscription, posts: list[Subscription]) -> Arrivals:
        if sub.arrivals is None:
            sub.arrivals = Arrivals()
            posts.append(sub)
        return sub.arrivals

    def _add_watch(self, fd: int, mask: int) -> int:
        return self._inotify.add_watch(f"/proc/self/fd/{fd}", mask | self.IN_MASK_ADD)
