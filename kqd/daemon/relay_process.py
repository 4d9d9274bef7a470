"""The peer-credential relay's own process: accept, record who connected, copy bytes both ways.

``peer_relay`` (in the daemon) starts it as ``python -I -S relay_process.py LISTENER CONTROL
DIRECTORY GENERATION``: LISTENER is the public socket the daemon bound and listens on, CONTROL
one end of a SOCK_SEQPACKET socketpair, DIRECTORY the daemon's private 0700 directory (with
gRPC's socket ``grpc.sock`` in it), GENERATION a number the daemon never gives twice, so the
names of a restarted relay are new names. It runs as the daemon's uid: nobody else may create
anything in DIRECTORY.

For each accepted connection it reads the kernel's credentials of the peer, writes them to
``c<GENERATION>.<n>.cred`` (a temporary name renamed into place: the daemon never reads half a
record), then binds a socket of its own to ``c<GENERATION>.<n>`` and connects to gRPC, and
relays bytes until both directions have ended. Before closing a connection it removes the
record and the name.

CONTROL carries ``s`` from the daemon (stop accepting: shutdown has begun) and, the other way,
warnings for the daemon's log. When the daemon's end closes (``close()``, or the daemon died)
the relay drops every connection, removes what it made in DIRECTORY and exits. It ignores
SIGINT, SIGTERM and SIGHUP: a terminal's ^C or systemd's stop reaches the whole group, and the
relayed streams must last through the daemon's grace period; the daemon decides when it ends.

Standard library only (with ``-I -S`` neither the daemon's virtualenv nor its source tree is on
sys.path), so it starts in a few milliseconds and imports nothing of gRPC. The daemon imports
the record format from here: one definition of it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import struct
import sys

GRPC_SOCKET = "grpc.sock"
RECORD_SUFFIX = ".cred"
STOP_ACCEPTING = b"s"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_CHUNK = 256 * 1024
_MAX_GROUPS = 65536
_ACCEPTS_PER_TURN = 16  # a burst of connections must not starve the ones being relayed


def peer_record(sock: socket.socket) -> bytes:
    """The kernel's credentials of *sock*'s peer as of its ``connect()``, as one record:
    ``uid gid pid group...`` in ASCII (SO_PEERCRED, and SO_PEERGROUPS for the groups)."""
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:  # before Linux 4.13: no groups beyond the primary one
        groups = ()
    return " ".join(map(str, (uid, gid, pid, *groups))).encode() + b"\n"


def read_record(record: bytes) -> tuple[int, int, int, tuple[int, ...]]:
    """(uid, gid, pid, groups) from a record ``peer_record`` made."""
    uid, gid, pid, *groups = map(int, record.split())
    return uid, gid, pid, tuple(groups)


class _Pipe:
    """One direction of a relayed connection: bytes read from *src*, not yet written to *dst*;
    ``mask`` is what the relay's epoll watches on *src* (each socket is one pipe's source)."""

    __slots__ = ("dst", "eof", "mask", "pending", "shut", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.pending = memoryview(b"")
        self.eof = False  # src has no more to give
        self.shut = False  # and dst has been told (SHUT_WR)
        self.mask = _READ


class _Relayed:
    """An accepted connection, its private twin, and the name the gRPC server sees."""

    __slots__ = ("down", "name", "up")

    def __init__(self, outer: socket.socket, inner: socket.socket, name: str) -> None:
        self.name = name
        self.up = _Pipe(outer, inner)
        self.down = _Pipe(inner, outer)


_READ = select.EPOLLIN
_WRITE = select.EPOLLOUT
_BROKEN = select.EPOLLHUP | select.EPOLLERR  # reported whether asked for or not


class Relay:
    """The process's one epoll loop over the listener, CONTROL and every relayed socket.

    Each direction has one buffer; a side is read only while the other has taken everything,
    so a slow reader holds up its own connection and nothing else. Bytes are read into one
    scratch buffer and written straight on; only what the writer does not take at once is
    copied aside, so a small call costs one recv and one send per hop. (epoll itself rather
    than ``selectors``: this loop is the relay's whole cost per call.)
    """

    def __init__(
        self, listener: socket.socket, control: socket.socket, directory: str, generation: int
    ) -> None:
        self.listener: socket.socket | None = listener
        self.control = control
        self.directory = directory
        self.generation = generation
        self.target = os.path.join(directory, GRPC_SOCKET)
        self.epoll = select.epoll()
        # fd -> (connection, the pipe it is the source of, the pipe it is the destination of)
        self.sockets: dict[int, tuple[_Relayed, _Pipe, _Pipe]] = {}
        self.relayed: set[_Relayed] = set()
        self.names = 0
        self.scratch = bytearray(_CHUNK)
        self.view = memoryview(self.scratch)
        listener.setblocking(False)
        control.setblocking(False)

    def run(self) -> None:
        assert self.listener is not None
        listening, controlling = self.listener.fileno(), self.control.fileno()
        self.epoll.register(listening, _READ)
        self.epoll.register(controlling, _READ)
        try:
            while True:
                for fd, events in self.epoll.poll():
                    entry = self.sockets.get(fd)
                    if entry is not None:
                        conn, reading, writing = entry
                        if not self._serve(conn, events, reading, writing):
                            self._drop(conn)
                    elif fd == controlling:
                        if not self._obey():
                            return
                    elif fd == listening and self.listener is not None:
                        self._accept()
        finally:
            for conn in list(self.relayed):
                self._drop(conn)
            self.epoll.close()

    def warn(self, message: str) -> None:
        """A line for the daemon's log; dropped if the daemon is not reading (never blocks)."""
        with contextlib.suppress(OSError):
            self.control.send(message.encode(errors="replace")[:4096])

    # ------------------------------------------------------------------ control

    def _obey(self) -> bool:
        """One message from the daemon; False once its end has closed."""
        try:
            message = self.control.recv(64)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not message:
            return False
        if message == STOP_ACCEPTING and self.listener is not None:
            self.epoll.unregister(self.listener.fileno())
            self.listener.close()
            self.listener = None
        return True

    # ------------------------------------------------------------------ accepting

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_TURN):
            if self.listener is None:
                return
            try:
                outer, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: refuse this one, keep serving
                self.warn(f"cannot accept a connection: {exc.strerror}")
                return
            self._relay(outer)

    def _relay(self, outer: socket.socket) -> None:
        self.names += 1
        name = os.path.join(self.directory, f"c{self.generation}.{self.names}")
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._record(name, peer_record(outer))  # before the server can see the name
            inner.bind(name)
            inner.connect(self.target)
        except OSError as exc:
            self.warn(f"cannot relay a connection: {exc.strerror}")
            self._forget(name)
            outer.close()
            inner.close()
            return
        outer.setblocking(False)
        inner.setblocking(False)
        conn = _Relayed(outer, inner, name)
        self.relayed.add(conn)
        self.sockets[outer.fileno()] = (conn, conn.up, conn.down)
        self.sockets[inner.fileno()] = (conn, conn.down, conn.up)
        self.epoll.register(outer.fileno(), _READ)
        self.epoll.register(inner.fileno(), _READ)

    @staticmethod
    def _record(name: str, record: bytes) -> None:
        """Write *record* for *name*: whole, under a name the daemon never reads, then renamed."""
        partial = name + ".tmp"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, record)
        finally:
            os.close(fd)
        os.rename(partial, name + RECORD_SUFFIX)

    # ------------------------------------------------------------------ relaying

    def _serve(self, conn: _Relayed, events: int, reading: _Pipe, writing: _Pipe) -> bool:
        """Move what the socket's readiness allows (*reading*: the direction it is the source
        of; *writing*: the one it is the destination of); False once *conn* is over (both
        directions ended, or a side broke)."""
        if events & (_READ | _BROKEN) and not self._move(reading):
            return False
        if events & (_WRITE | _BROKEN) and writing.pending and not self._move(writing):
            return False
        if conn.up.shut and conn.down.shut:
            return False
        self._rearm(conn.up, conn.down)
        self._rearm(conn.down, conn.up)
        return True

    def _move(self, pipe: _Pipe) -> bool:
        """Write what is pending, else read and write at once; False on a broken side."""
        try:
            if pipe.pending:
                pipe.pending = pipe.pending[pipe.dst.send(pipe.pending) :]
            elif not pipe.eof:
                got = pipe.src.recv_into(self.scratch)
                if got:
                    try:
                        sent = pipe.dst.send(self.view[:got])
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent < got:
                        pipe.pending = memoryview(bytes(self.view[sent:got]))
                else:
                    pipe.eof = True
            if pipe.eof and not pipe.pending and not pipe.shut:
                pipe.shut = True
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                self.warn(f"relay: {exc}")
            return False
        return True

    def _rearm(self, out_pipe: _Pipe, in_pipe: _Pipe) -> None:
        """*out_pipe*'s source waits to read while that direction is drained, and to write
        while *in_pipe* (towards it) has bytes pending; a side with neither is not watched."""
        mask = 0
        if not out_pipe.pending and not out_pipe.eof:
            mask |= _READ
        if in_pipe.pending:
            mask |= _WRITE
        if mask == out_pipe.mask:
            return  # the usual case: nothing pending either way, both sides reading
        fd = out_pipe.src.fileno()
        if not out_pipe.mask:
            self.epoll.register(fd, mask)
        elif not mask:
            self.epoll.unregister(fd)
        else:
            self.epoll.modify(fd, mask)
        out_pipe.mask = mask

    def _drop(self, conn: _Relayed) -> None:
        self.relayed.discard(conn)
        self._forget(conn.name)  # first: no later connection may inherit the name
        for pipe in (conn.up, conn.down):
            self.sockets.pop(pipe.src.fileno(), None)
            pipe.src.close()  # which takes it out of the epoll set too

    @staticmethod
    def _forget(name: str) -> None:
        for path in (name + RECORD_SUFFIX, name + ".tmp", name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _clear(directory: str) -> None:
    """The daemon has gone or closed: remove the private directory (gRPC's socket name too,
    if the daemon died and left it); the daemon, when it is closing, ignores what is gone."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))
        os.rmdir(directory)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    listener_fd, control_fd, directory, generation = argv
    listener = socket.socket(fileno=int(listener_fd))
    control = socket.socket(fileno=int(control_fd))
    Relay(listener, control, directory, int(generation)).run()
    # Only here, when the daemon's end closed: a relay that fails leaves gRPC's socket for the
    # one the daemon starts next (its own names went as its connections were dropped).
    _clear(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
