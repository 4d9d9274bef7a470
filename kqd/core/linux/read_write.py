"""EVFILT_READ and EVFILT_WRITE: readiness of sockets, pipes, FIFOs, files and other kqueues."""

from __future__ import annotations

import select
import stat

from kqd.core.constants import KQ_EV_EOF, KQ_NOTE_LOWAT
from kqd.core.linux import fdstate
from kqd.core.linux.fdtable import FdWatch
from kqd.core.linux.filter import Filter
from kqd.core.linux.inotify_hub import InotifyHub, Subscription
from kqd.core.linux.knote import Knote
from kqd.core.linux.kqueue import pending_count

# A regular file's READ knote is woken by writes and truncations, seen through inotify.
_FILE_CHANGED = InotifyHub.IN_MODIFY | InotifyHub.IN_ATTRIB


def _set_eof(kn: Knote, eof: bool, watch: FdWatch) -> None:
    if eof:
        kn.flags |= KQ_EV_EOF
        kn.fflags = watch.sock_error
    else:
        kn.flags &= ~KQ_EV_EOF


def _remember_error(watch: FdWatch, revents: int) -> None:
    if revents & select.POLLERR and stat.S_ISSOCK(watch.mode):
        watch.sock_error = fdstate.socket_error(watch.fd) or watch.sock_error


def _threshold(kn: Knote) -> int:
    return kn.sdata if kn.sfflags & KQ_NOTE_LOWAT else 1


class ReadFilter(Filter):
    """data = bytes readable (listening socket: pending connections; file: size - offset).

    EV_EOF when the peer shut down or the last writer left, with the socket error in fflags.
    NOTE_LOWAT makes data >= the knote's data the condition instead of data > 0.
    """

    is_fd = True

    def attach(self, kn: Knote) -> None:
        watch = self.kq.fds.attach(kn)
        kn.hook = watch
        if not watch.pollable and stat.S_ISREG(watch.mode):
            kn.hook = (watch, self._subscribe(kn, watch))

    def _subscribe(self, kn: Knote, watch: FdWatch) -> Subscription:
        return InotifyHub.shared().subscribe(
            watch.stat_fd, _FILE_CHANGED, self.kq, lambda _events: self.kq.activate(kn, None)
        )

    def detach(self, kn: Knote) -> None:
        if isinstance(kn.hook, tuple):
            kn.hook[1].cancel()
        self.kq.fds.detach(kn)

    def event(self, kn: Knote, hint: object) -> bool:
        watch: FdWatch = kn.hook[0] if isinstance(kn.hook, tuple) else kn.hook
        if not watch.pollable:
            kn.data = fdstate.file_unread(watch.stat_fd)
            return kn.data != 0
        revents = fdstate.poll_now(watch.fd)
        _remember_error(watch, revents)
        eof = bool(revents & (select.POLLHUP | select.POLLRDHUP))
        _set_eof(kn, eof, watch)
        if stat.S_ISSOCK(watch.mode):
            backlog = fdstate.listen_backlog(watch.fd)
            if backlog is not None:
                kn.data = backlog
                return backlog >= _threshold(kn)
        readable = fdstate.bytes_readable(watch.fd)
        if readable is None:
            readable = pending_count(watch.fd)
            if readable is None:
                readable = 1 if revents & select.POLLIN else 0
        kn.data = readable
        return eof or bool(revents & select.POLLERR) or readable >= _threshold(kn)


class WriteFilter(Filter):
    """data = free space in the send buffer (pipe: capacity minus content; file: 0).

    EV_EOF when the reader went away (or a connect failed), with the socket error in fflags.
    """

    is_fd = True

    def attach(self, kn: Knote) -> None:
        kn.hook = self.kq.fds.attach(kn)

    def detach(self, kn: Knote) -> None:
        self.kq.fds.detach(kn)

    def event(self, kn: Knote, hint: object) -> bool:
        watch: FdWatch = kn.hook
        if not watch.pollable:
            kn.data = 0
            return True
        revents = fdstate.poll_now(watch.fd)
        _remember_error(watch, revents)
        eof = bool(revents & (select.POLLHUP | select.POLLERR))
        _set_eof(kn, eof, watch)
        kn.data = fdstate.write_space(watch.fd, watch.mode)
        if eof:
            return True
        if not revents & select.POLLOUT:
            return False
        return kn.data >= _threshold(kn) or not kn.sfflags & KQ_NOTE_LOWAT
