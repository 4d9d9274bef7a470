"""A kqueue's view of its user's descriptors, and how it notices that one was closed.

FreeBSD drops a descriptor's knotes inside close(2), so a number that is reused never sees a
stale event. Python code closes descriptors without telling us, and Linux reuses the lowest free
number at once, so kqd has to notice by itself that a number no longer names the object its
knotes were attached to. Two kernel facts make that exact and cheap:

* Pollable objects (sockets, pipes, FIFOs, eventfds, other kqueues) sit in our epoll, and epoll
  keys a registration by (open file, number): it removes the registration when the open file is
  released, and ``EPOLL_CTL_MOD`` on the number fails (ENOENT, EBADF) as soon as the number names
  anything else. No extra reference is held, so the user's close() still closes the socket and
  the peer still sees EOF.
* Objects epoll refuses (regular files, directories: EPERM) are held through a duplicate
  descriptor, and ``kcmp(KCMP_FILE)`` tells whether the user's number still names the same open
  file description. Holding a duplicate of a file changes nothing the user can observe, except
  that an unlinked file keeps its blocks until the knote goes.

Both checks run lazily: before any change that names the number, and before a knote on it is
delivered. A stale watch loses its knotes then, pending events included, so it never reports.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import stat
from typing import TYPE_CHECKING

from kqd.core.constants import KQ_FILTER_READ, KQ_FILTER_WRITE
from kqd.core.linux import syscalls

if TYPE_CHECKING:
    from kqd.core.linux.knote import Knote
    from kqd.core.linux.kqueue import Kqueue

# What each fd filter needs epoll to watch; edge-triggered, the filters read the real state.
_EPOLL_INTEREST = {
    KQ_FILTER_READ: select.EPOLLIN | select.EPOLLRDHUP,
    KQ_FILTER_WRITE: select.EPOLLOUT,
}


class FdWatch:
    """One user descriptor: the knotes on it (at most one per filter) and how to check it."""

    __slots__ = ("fd", "identity", "knotes", "mode", "ref", "sock_error", "table")

    def __init__(self, table: FdTable, fd: int, st: os.stat_result) -> None:
        self.table = table
        self.fd = fd
        self.mode = st.st_mode
        self.identity = (st.st_dev, st.st_ino)
        self.ref: int | None = None  # our duplicate, for objects epoll refuses
        self.knotes: dict[int, Knote] = {}
        self.sock_error = 0  # SO_ERROR is cleared by reading it: remember it for EV_EOF

    @property
    def pollable(self) -> bool:
        return self.ref is None

    @property
    def epoll_mask(self) -> int:
        mask = select.EPOLLET
        for filt in self.knotes:
            mask |= _EPOLL_INTEREST.get(filt, 0)
        return mask

    @property
    def stat_fd(self) -> int:
        """A descriptor for the object itself, valid while the watch is alive."""
        return self.fd if self.ref is None else self.ref

    def on_ready(self, events: int) -> None:
        for kn in list(self.knotes.values()):
            self.table.kq.activate(kn, events)

    def on_stale(self) -> None:
        self.table.forget(self)

    def same_object(self, *, may_rearm: bool) -> bool:
        """Does the user's number still name the object the knotes were attached to?

        ``EPOLL_CTL_MOD`` is exact but re-arms the edge, which would re-activate an EV_CLEAR
        knote that was just delivered; so before a delivery (*may_rearm* False) sockets, pipes
        and FIFOs, whose inodes are unique per object, are compared by (device, inode) instead.
        """
        if self.ref is None:
            if not may_rearm and (stat.S_ISSOCK(self.mode) or stat.S_ISFIFO(self.mode)):
                return self._same_inode()
            try:
                self.table.kq.modify_source(self.fd, self.epoll_mask)
            except OSError:
                return False
            return True
        try:
            return syscalls.same_open_file(self.fd, self.ref)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return False  # the number is closed
        # kcmp is missing or forbidden (container seccomp profiles block it without
        # CAP_SYS_PTRACE): the inode is the next best identity.
        return self._same_inode()

    def _same_inode(self) -> bool:
        try:
            st = os.fstat(self.fd)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity


class FdTable:
    """The descriptors a kqueue's fd-based knotes (READ, WRITE, VNODE) sit on."""

    def __init__(self, kq: Kqueue) -> None:
        self.kq = kq
        self._watches: dict[int, FdWatch] = {}

    def knotes(self) -> list[Knote]:
        """Every knote on a descriptor (READ, WRITE, VNODE): at most a few per descriptor."""
        return [kn for watch in self._watches.values() for kn in watch.knotes.values()]

    def check(self, fd: int) -> None:
        """Before a change on *fd*: EBADF unless it is an open descriptor of the user's;
        a watch left over from an earlier object with that number is dropped."""
        if self.kq.owns_fd(fd) and fd not in self._watches:
            raise OSError(errno.EBADF, f"descriptor {fd} belongs to the kqueue itself")
        try:
            os.fstat(fd)
        except (OSError, OverflowError):
            raise OSError(errno.EBADF, f"{fd} is not an open descriptor") from None
        watch = self._watches.get(fd)
        if watch is not None and not watch.same_object(may_rearm=True):
            self.forget(watch)

    def attach(self, kn: Knote) -> FdWatch:
        """Put *kn* on its descriptor's watch, creating the watch (and epoll entry) if needed."""
        watch = self._watches.get(kn.ident)
        if watch is None:
            watch = FdWatch(self, kn.ident, os.fstat(kn.ident))
            watch.knotes[kn.filter] = kn
            try:
                self.kq.add_source(kn.ident, watch.epoll_mask, watch)
            except PermissionError:
                watch.ref = fcntl.fcntl(kn.ident, fcntl.F_DUPFD_CLOEXEC, 0)
            self._watches[kn.ident] = watch
        else:
            watch.knotes[kn.filter] = kn
            if watch.pollable:
                self.kq.modify_source(kn.ident, watch.epoll_mask)
        return watch

    def detach(self, kn: Knote) -> None:
        watch = self._watches.get(kn.ident)
        if watch is None or watch.knotes.get(kn.filter) is not kn:
            return
        del watch.knotes[kn.filter]
        if not watch.knotes:
            self._release(watch, registered=True)
        elif watch.pollable:
            with contextlib.suppress(OSError):  # closed already: nothing to narrow
                self.kq.modify_source(kn.ident, watch.epoll_mask)

    def alive(self, kn: Knote) -> bool:
        """Before delivering *kn*: is its descriptor still the same object? Drops it if not."""
        watch = self._watches.get(kn.ident)
        if watch is None or watch.knotes.get(kn.filter) is not kn:
            return False
        if watch.same_object(may_rearm=False):
            return True
        self.forget(watch)
        return False

    def forget(self, watch: FdWatch) -> None:
        """The descriptor was closed: drop its knotes (their pending events too). Its epoll
        entry is gone already or belongs to another file now, so it is not removed."""
        if self._watches.get(watch.fd) is not watch:
            return
        self._release(watch, registered=False)
        for kn in list(watch.knotes.values()):
            self.kq.drop(kn)

    def _release(self, watch: FdWatch, *, registered: bool) -> None:
        if self._watches.get(watch.fd) is watch:
            del self._watches[watch.fd]
        if watch.ref is None:
            if self.kq.source_of(watch.fd) is watch:
                self.kq.remove_source(watch.fd, registered=registered)
        else:
            os.close(watch.ref)
            watch.ref = None
