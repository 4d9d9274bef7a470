"""EVFILT_VNODE: what happened to a file or directory, from the shared inotify instance.

inotify watches inodes, so a knote follows its file across renames, as a vnode knote does.

FreeBSD's filesystems post *hints*: the notes of one operation, together. A write posts
NOTE_WRITE, or NOTE_WRITE|NOTE_EXTEND when the file grew; mkdir and rmdir post
NOTE_WRITE|NOTE_LINK on the parent; a rename posts NOTE_WRITE on its directory, and
NOTE_WRITE|NOTE_EXTEND (plus NOTE_LINK for a subdirectory) on each of two directories
(``vop_*_post`` in ``sys/kern/vfs_subr.c``). ``filt_vfsvnode`` records a hint whole when any of
its notes was asked for, so an append watched for NOTE_WRITE alone reports NOTE_WRITE|NOTE_EXTEND.
``VnodeState.hints`` turns inotify's events into the same hints, and the knote asks inotify for an
event when one of the hints it can bring intersects the knote's notes. Two translations need care:

* NOTE_DELETE means "link count reached 0". Our own descriptor keeps an unlinked inode alive,
  so IN_DELETE_SELF only comes when the last descriptor closes; the unlink itself shows as
  IN_ATTRIB (the link count changed). So IN_ATTRIB on a file is checked against the link count:
  0 is NOTE_DELETE, another change is NOTE_LINK, no change is NOTE_ATTRIB. (Events that arrive
  before the knote's delivery runs are merged by the hub, so a chmod and a link made together
  show as NOTE_LINK.)
* A directory reports only what happens to itself: an entry created, removed or renamed. The
  events of the files inside it are dropped by the hub.

An inotify queue overflow has no FreeBSD counterpart: events were dropped, and anything may have
changed. Each knote remembers the inode's size, link count, mtime, ctime, mode and owner as of
its last event, and after an overflow compares them with fstat, reporting only what really
changed: link count 0 is NOTE_DELETE, another link count change NOTE_LINK (NOTE_WRITE|NOTE_LINK
for a directory), growth NOTE_WRITE|NOTE_EXTEND, a shrink or a new mtime NOTE_WRITE, a new mode
or owner, or a new ctime alone, NOTE_ATTRIB. A knote on an untouched file reports nothing. What
leaves no trace in the inode cannot be recovered: NOTE_OPEN, NOTE_CLOSE, NOTE_CLOSE_WRITE,
NOTE_READ, NOTE_RENAME (an inode does not record its name), and another attribute change (an
extended attribute, a timestamp) that came with a write shows as the write only. ``data``
counts the overflows behind the notes recovered this way (it is 0 for events seen one by one, as
in FreeBSD), so a reader can tell that such notes may be missing. The state is read when the
knote's delivery runs, just after its kqueue drained the inotify queue: a change whose event an
overflow dropped is not absorbed into the state before the overflow is seen, unless a whole
queue of events (max_queued_events) arrives within that instant.

Without EV_CLEAR a fired VNODE knote is reported on every call, as in FreeBSD (its fflags are only
reset by EV_CLEAR).

A restart of the host is recovered from like an overflow. A snapshot keeps what the knote
remembers of the inode with the notes not yet reported; ``restore``, given a descriptor
of the same file (checking that it is the same inode is the host's part: it re-opens the file
by its path), attaches and records what fstat shows changed meanwhile, counting the restart in
``data`` as one more overflow, since what the inode does not record is lost the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from kqd.core.constants import (
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
from kqd.core.linux.inotify_hub import Arrivals, InotifyHub, Subscription
from kqd.core.linux.knote import Knote

H = InotifyHub

# inotify events of the inode itself that always mean one note.
_ONE_TO_ONE = {
    H.IN_DELETE_SELF: KQ_NOTE_DELETE,
    H.IN_MOVE_SELF: KQ_NOTE_RENAME,
    H.IN_UNMOUNT: KQ_NOTE_REVOKE,
    H.IN_OPEN: KQ_NOTE_OPEN,
    H.IN_CLOSE_NOWRITE: KQ_NOTE_CLOSE,
    H.IN_CLOSE_WRITE: KQ_NOTE_CLOSE_WRITE,
    H.IN_ACCESS: KQ_NOTE_READ,
}
# The notes each inotify event can bring (see VnodeState.hints), on a file and on a directory.
_BRINGS = {**_ONE_TO_ONE, H.IN_ATTRIB: KQ_NOTE_ATTRIB | KQ_NOTE_LINK | KQ_NOTE_DELETE}
_FILE_BRINGS = {**_BRINGS, H.IN_MODIFY: KQ_NOTE_WRITE | KQ_NOTE_EXTEND}
_DIRECTORY_BRINGS = {
    **_BRINGS,
    H.IN_CREATE: KQ_NOTE_WRITE | KQ_NOTE_LINK,
    H.IN_DELETE: KQ_NOTE_WRITE | KQ_NOTE_LINK,
    H.IN_MOVED_FROM: KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_LINK,
    H.IN_MOVED_TO: KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_LINK,
}
del _DIRECTORY_BRINGS[H.IN_CLOSE_WRITE]  # a directory is never open for writing
# What VnodeState remembers of the inode, as kept in a snapshot.
_REMEMBERED = ("size", "nlink", "mtime", "ctime", "mode", "uid", "gid")


def _inotify_mask(notes: int, is_dir: bool) -> int:
    mask = H.IN_DELETE_SELF | H.IN_UNMOUNT  # always: the watch's own end
    for event, brings in (_DIRECTORY_BRINGS if is_dir else _FILE_BRINGS).items():
        if notes & brings:
            mask |= event
    return mask


def _entry_hint(kind: int, paired: bool) -> int:
    """A directory entry created, removed or renamed: renamed within the directory (both halves
    seen together) is NOTE_WRITE, in from or out to another directory NOTE_WRITE|NOTE_EXTEND; a
    subdirectory coming or going changes the link count, NOTE_LINK."""
    hint = KQ_NOTE_WRITE
    if not paired:
        if kind & H.IN_MOVED:
            hint |= KQ_NOTE_EXTEND
        if kind & H.IN_ISDIR:
            hint |= KQ_NOTE_LINK
    return hint


class VnodeState:
    """What the filter remembers of the inode: its state as of the knote's last event."""

    __slots__ = (
        "ctime",
        "gid",
        "is_dir",
        "mode",
        "mtime",
        "nlink",
        "size",
        "subscription",
        "uid",
        "watch",
    )

    def __init__(self, watch: FdWatch, st: os.stat_result) -> None:
        self.watch = watch
        self.is_dir = stat.S_ISDIR(st.st_mode)
        self.subscription: Subscription | None = None
        self.remember(st)

    def remember(self, st: os.stat_result) -> None:
        self.size, self.nlink = st.st_size, st.st_nlink
        self.mtime, self.ctime = st.st_mtime_ns, st.st_ctime_ns
        self.mode, self.uid, self.gid = st.st_mode, st.st_uid, st.st_gid

    def hints(self, arrivals: Arrivals, st: os.stat_result) -> list[int]:
        """The hints FreeBSD would have posted for the events that arrived."""
        hints = [note for event, note in _ONE_TO_ONE.items() if arrivals.mask & event]
        if arrivals.mask & H.IN_MODIFY:
            grew = st.st_size > self.size
            hints.append(KQ_NOTE_WRITE | KQ_NOTE_EXTEND if grew else KQ_NOTE_WRITE)
        if arrivals.mask & H.IN_ATTRIB:
            if st.st_nlink == 0:
                hints.append(KQ_NOTE_DELETE)
            elif st.st_nlink != self.nlink and not self.is_dir:  # a directory's: its entries
                hints.append(KQ_NOTE_LINK)
            else:
                hints.append(KQ_NOTE_ATTRIB)
        hints += [_entry_hint(kind, paired) for kind, paired in arrivals.entries]
        return hints

    def changes(self, st: os.stat_result) -> list[int]:
        """After an overflow: the hints for what fstat shows changed since the last event."""
        hints = []
        if st.st_nlink != self.nlink:
            if st.st_nlink == 0:
                hints.append(KQ_NOTE_DELETE)
            else:
                hints.append(KQ_NOTE_WRITE | KQ_NOTE_LINK if self.is_dir else KQ_NOTE_LINK)
        resized = 0 if self.is_dir else st.st_size - self.size  # a directory's size: its entries
        if resized > 0:
            hints.append(KQ_NOTE_WRITE | KQ_NOTE_EXTEND)
        elif resized < 0 or st.st_mtime_ns != self.mtime:
            hints.append(KQ_NOTE_WRITE)
        # A chmod or chown shows even beside a write; a new ctime with nothing else to account
        # for it was some other attribute change.
        chmod = (st.st_mode, st.st_uid, st.st_gid) != (self.mode, self.uid, self.gid)
        if chmod or (not hints and st.st_ctime_ns != self.ctime):
            hints.append(KQ_NOTE_ATTRIB)
        return hints


def _record(kn: Knote, hints: list[int]) -> bool:
    """``filt_vfsvnode``: a hint is recorded whole when any of its notes was asked for."""
    recorded = False
    for hint in hints:
        if hint & KQ_NOTE_REVOKE:
            kn.flags |= KQ_EV_EOF
        if hint & kn.sfflags:
            kn.fflags |= hint
            recorded = True
    return recorded


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
                _inotify_mask(kn.sfflags, state.is_dir),
                self.kq,
                lambda arrivals: self.kq.activate(kn, arrivals),
            )
        except OSError:
            self.kq.fds.detach(kn)
            raise

    def detach(self, kn: Knote) -> None:
        state: VnodeState = kn.hook
        if state.subscription is not None:
            state.subscription.cancel()
        self.kq.fds.detach(kn)

    def snapshot(self, kn: Knote) -> dict[str, Any]:
        state: VnodeState = kn.hook
        return {name: getattr(state, name) for name in _REMEMBERED} | {
            "fflags": kn.fflags,
            "data": kn.data,
        }

    def restore(self, kn: Knote, state: dict[str, Any]) -> None:
        self.attach(kn)
        vnode: VnodeState = kn.hook
        try:
            st = os.fstat(vnode.watch.stat_fd)
        except OSError:
            self.detach(kn)
            raise
        for name in _REMEMBERED:
            setattr(vnode, name, state[name])
        kn.fflags, kn.data = state["fflags"], state["data"]
        if _record(kn, vnode.changes(st)):
            kn.data += 1
        vnode.remember(st)

    def touch(self, kn: Knote, change: kevent) -> None:
        super().touch(kn, change)
        state: VnodeState = kn.hook
        if state.subscription is not None:
            state.subscription.widen(state.watch.stat_fd, _inotify_mask(kn.sfflags, state.is_dir))

    def event(self, kn: Knote, hint: object) -> bool:
        if isinstance(hint, Arrivals):
            state: VnodeState = kn.hook
            try:
                st = os.fstat(state.watch.stat_fd)
            except OSError:  # the user closed a device's descriptor: the knote goes at delivery
                return kn.fflags != 0
            _record(kn, state.hints(hint, st))
            if hint.overflow and _record(kn, state.changes(st)):
                kn.data += 1
            state.remember(st)
        return kn.fflags != 0
