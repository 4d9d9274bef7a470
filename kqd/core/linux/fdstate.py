"""What a descriptor's state is right now: readiness, bytes readable, space to write, backlog.

The READ and WRITE filters ask these every time they evaluate a knote, so epoll only has to say
that *something* changed. Where Linux has no direct answer the function says what it returns.
"""

from __future__ import annotations

import fcntl
import os
import select
import socket
import stat
import struct
import termios

_POLL_MASK = select.POLLIN | select.POLLOUT | select.POLLRDHUP
_F_GETPIPE_SZ = 1032
_SIOCOUTQ = termios.TIOCOUTQ
# struct tcp_info: on a listening socket tcpi_unacked is the accept queue length.
_TCPI_UNACKED_OFFSET = 24


def poll_now(fd: int) -> int:
    """The poll(2) revents of *fd* at this instant (POLLIN, POLLOUT, POLLHUP, POLLERR, ...)."""
    poller = select.poll()
    poller.register(fd, _POLL_MASK)
    ready = poller.poll(0)
    return ready[0][1] if ready else 0


def _int_ioctl(fd: int, request: int) -> int | None:
    try:
        return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]
    except OSError:
        return None


def bytes_readable(fd: int) -> int | None:
    """FIONREAD: bytes queued to read (for UDP, the size of the next datagram)."""
    return _int_ioctl(fd, termios.FIONREAD)


class _BorrowedSocket:
    """A socket object over someone else's descriptor, for getsockopt; never closes it."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fd)

    def __enter__(self) -> socket.socket:
        return self._sock

    def __exit__(self, *exc_info: object) -> None:
        self._sock.detach()


def socket_error(fd: int) -> int:
    """SO_ERROR. Reading it clears it, as with getsockopt(2); callers keep what they read."""
    with _BorrowedSocket(fd) as sock:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def listen_backlog(fd: int) -> int | None:
    """Connections waiting in accept() on a listening socket, None if *fd* is not listening.

    TCP reports the real queue length through TCP_INFO; for other families Linux has no cheap
    query, so a readable listening socket reports 1.
    """
    with _BorrowedSocket(fd) as sock:
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        except OSError:
            return 1 if poll_now(fd) & select.POLLIN else 0
        if len(info) < _TCPI_UNACKED_OFFSET + 4:
            return 1 if poll_now(fd) & select.POLLIN else 0
        return int(struct.unpack_from("I", info, _TCPI_UNACKED_OFFSET)[0])


def write_space(fd: int, mode: int) -> int:
    """Free space to write: send buffer minus queued bytes for sockets, pipe capacity minus
    content for pipes and FIFOs, 0 where Linux cannot tell."""
    if stat.S_ISSOCK(mode):
        with _BorrowedSocket(fd) as sock:
            size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return max(0, size - (_int_ioctl(fd, _SIOCOUTQ) or 0))
    if stat.S_ISFIFO(mode):
        try:
            capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
        except OSError:
            return 0
        return max(0, capacity - (bytes_readable(fd) or 0))
    return 0


def file_unread(fd: int) -> int:
    """Regular file or directory: size minus the descriptor's offset (FreeBSD's vfs read data)."""
    return os.fstat(fd).st_size - os.lseek(fd, 0, os.SEEK_CUR)
