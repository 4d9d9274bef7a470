"""EVFILT_VNODE: what happened to a file or directory, from the shared inotify instance.

inotify watches inodes, so a knote follows its file across renames, as a vnode knote does.
Two translations need care:

* NOTE_DELETE means "link count reached 0". Our own descriptor keeps an unlinked inode alive,
  so IN_DELETE_SELF only comes when the last descriptor closes; the unlink itself shows as
  IN_ATTRIB (the link count changed). So IN_ATTRIB is checked against the link count: 0 is
  NOTE_DELETE, another change is NOTE_LINK, no change is NOTE_ATTRIB.
* In a directory, an entry renamed within it is NOTE_WRITE; renamed in from or out to another
  directory it is NOTE_WRITE|NOTE_EXTEND. inotify reports both halves of a rename with one
  cookie, so a pair seen in the same batch is a rename within the directory.

An inotify queue overflow reaches every VNODE knote as every note it asked for, with data 1:
anything may have changed, look again. Without EV_CLEAR a fired VNODE knote is reported on every
call, as in FreeBSD (its fflags are only reset by EV_CLEAR).
"""

from __future__ import annotations

import errno
import os
import stat

from kqd.core.constants import (
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_NOTE_ATTRIB,
    KQ_NOTE_CLOSE,
    KQ_NOTE_CLOSE_WRITE,
    KQ_NOTE_DELETE,
    KQ_NOTE_EXTEND,
    KQ_NOTE_LINK,
    KQ_NOTE_OPEN,
    KQ_NOTE_READ,
    KQ_NOTE_RENAME,
    KQ_NOTE_REVOKE,
    KQ_NOTE_WRITE,
)
from kqd.core.kevent import kevent
from kqd.core.linux.fdtable import FdWatch
from kqd.core.linux.filter import Filter
from kqd.core.linux.inotify_hub import InotifyEvent, InotifyHub, Subscription
from kqd.core.linux.knote import Knote

H = InotifyHub
OVERFLOW = object()  # the hint for an inotify queue overflow
_DIR_ENTRY_CHANGES = H.IN_CREATE | H.IN_DELETE | H.IN_MOVED_FROM | H.IN_MOVED_TO

# The inotify events each note needs.
_WATCH_FOR = {
    KQ_NOTE_DELETE: H.IN_ATTRIB | H.IN_DELETE_SELF,
    KQ_NOTE_WRITE: H.IN_MODIFY | _DIR_ENTRY_CHANGES,
    KQ_NOTE_EXTEND: H.IN_MODIFY | H.IN_MOVED_FROM | H.IN_MOVED_TO,
    KQ_NOTE_ATTRIB: H.IN_ATTRIB,
    KQ_NOTE_LINK: H.IN_ATTRIB | H.IN_CREATE | H.IN_DELETE | H.IN_MOVED_FROM | H.IN_MOVED_TO,
    KQ_NOTE_RENAME: H.IN_MOVE_SELF,
    KQ_NOTE_REVOKE: H.IN_UNMOUNT,
    KQ_NOTE_OPEN: H.IN_OPEN,
    KQ_NOTE_CLOSE: H.IN_CLOSE_NOWRITE,
    KQ_NOTE_CLOSE_WRITE: H.IN_CLOSE_WRITE,
    KQ_NOTE_READ: H.IN_ACCESS,
}
_ALL_NOTES = sum(_WATCH_FOR)
# inotify events that always mean one note (the others depend on context; see notes_for).
_ONE_TO_ONE = {
    H.IN_MODIFY: KQ_NOTE_WRITE,
    H.IN_DELETE_SELF: KQ_NOTE_DELETE,
    H.IN_MOVE_SELF: KQ_NOTE_RENAME,
    H.IN_UNMOUNT: KQ_NOTE_REVOKE,
    H.IN_OPEN: KQ_NOTE_OPEN,
    H.IN_CLOSE_NOWRITE: KQ_NOTE_CLOSE,
    H.IN_CLOSE_WRITE: KQ_NOTE_CLOSE_WRITE,
    H.IN_ACCESS: KQ_NOTE_READ,
}


def _inotify_mask(notes: int) -> int:
    mask = H.IN_DELETE_SELF | H.IN_UNMOUNT  # always: the watch's own end
    for note, events in _WATCH_FOR.items():
        if notes & note:
            mask |= events
    return mask


class VnodeState:
    """What the filter remembers of the inode between events."""

    __slots__ = ("nlink", "overflows", "size", "subscription", "watch")

    def __init__(self, watch: FdWatch, st: os.stat_result) -> None:
        self.watch = watch
        self.subscription: Subscription | None = None
        self.size = st.st_size
        self.nlink = st.st_nlink
        self.overflows = 0

    def notes_for(self, batch: list[InotifyEvent]) -> int:
        """Translate one read's events for this inode into NOTE_* bits."""
        try:
            st = os.fstat(self.watch.stat_fd)
        except OSError:
            return KQ_NOTE_DELETE
        notes = 0
        moves = [e.cookie for e in batch if e.mask & (H.IN_MOVED_FROM | H.IN_MOVED_TO)]
        for event in batch:
            mask = event.mask
            if mask & (H.IN_CREATE | H.IN_DELETE):
                notes |= KQ_NOTE_WRITE | (KQ_NOTE_LINK if mask & H.IN_ISDIR else 0)
            if mask & (H.IN_MOVED_FROM | H.IN_MOVED_TO):
                notes |= KQ_NOTE_WRITE
                if moves.count(event.cookie) < 2:
                    notes |= KQ_NOTE_EXTEND | (KQ_NOTE_LINK if mask & H.IN_ISDIR else 0)
            if mask & H.IN_ATTRIB:
                if st.st_nlink == 0:
                    notes |= KQ_NOTE_DELETE
                elif st.st_nlink != self.nlink:
                    notes |= KQ_NOTE_LINK
                else:
                    notes |= KQ_NOTE_ATTRIB
            for inotify_bit, note in _ONE_TO_ONE.items():
                if mask & inotify_bit:
                    notes |= note
        if notes & KQ_NOTE_WRITE and stat.S_ISREG(st.st_mode) and st.st_size > self.size:
            notes |= KQ_NOTE_EXTEND
        self.size, self.nlink = st.st_size, st.st_nlink
        return notes


class VnodeFilter(Filter):
    """fflags in = the notes wanted; out = the notes that happened since the last report."""

    is_fd = True

    def attach(self, kn: Knote) -> None:
        st = os.fstat(kn.ident)
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            raise OSError(
                errno.EINVAL, "KQ_FILTER_VNODE needs a file or directory, not a pipe or socket"
            )
        state = VnodeState(self.kq.fds.attach(kn), st)
        kn.hook = state
        try:
            state.subscription = InotifyHub.shared().subscribe(
                state.watch.stat_fd,
                _inotify_mask(kn.sfflags),
                self.kq,
                lambda batch: self.kq.activate(kn, batch if batch is not None else OVERFLOW),
            )
        except OSError:
            self.kq.fds.detach(kn)
            raise

    def detach(self, kn: Knote) -> None:
        state: VnodeState = kn.hook
        if state.subscription is not None:
            state.subscription.cancel()
        self.kq.fds.detach(kn)

    def touch(self, kn: Knote, change: kevent) -> None:
        super().touch(kn, change)
        state: VnodeState = kn.hook
        if state.subscription is not None:
            state.subscription.widen(state.watch.stat_fd, _inotify_mask(kn.sfflags))

    def event(self, kn: Knote, hint: object) -> bool:
        state: VnodeState = kn.hook
        if hint is OVERFLOW:
            state.overflows += 1
            kn.fflags |= kn.sfflags & _ALL_NOTES
            kn.data = state.overflows
        elif isinstance(hint, list):
            notes = state.notes_for(hint)
            kn.fflags |= notes & kn.sfflags
            if notes & KQ_NOTE_REVOKE:
                kn.flags |= KQ_EV_EOF
        return kn.fflags != 0

    def report(self, kn: Knote) -> tuple[int, int]:
        result = super().report(kn)
        if kn.flags & KQ_EV_CLEAR:  # the overflow count is reported once
            kn.hook.overflows = 0
        return result
