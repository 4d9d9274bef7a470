"""Who is calling on a Unix socket: the kernel's peer credentials, carried to the gRPC handlers.

grpc (core and Python) never reads SO_PEERCRED: ``context.peer()`` on a Unix socket says
``unix:`` and nothing else, and its "local" credentials check nothing. So kqd accepts the public
socket's connections itself. For each one it reads the kernel's record of the connecting
process (SO_PEERCRED: pid, uid, gid as of ``connect()``; SO_PEERGROUPS: its supplementary
groups), then opens a connection of its own to the gRPC server's *private* socket, bound first
to a fresh name in a private directory, and relays bytes both ways. gRPC reports that name as
the call's peer (``unix:<dir>/c17``), and the name maps to the credentials read at accept.

Why this cannot be forged: the private directory is mode 0700 and owned by the daemon, so no
one else can connect to the private socket or create names in it; the credentials come from the
kernel, not from anything the client sends; a name is entered before its connection is made and
removed (and unlinked) before the connection is closed, so no later connection can inherit it.

The relay is a thread of its own with a selector: its copies run beside the asyncio loop (on the
second core, when there is one) instead of inside it. Each direction has one buffer; a side is
read only while the other has taken everything, so a slow reader holds up its own connection and
nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import struct
import tempfile
import threading
from pathlib import Path

from kqd.daemon.credentials import Credentials

log = logging.getLogger("kqd.daemon")

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_CHUNK = 256 * 1024
_MAX_GROUPS = 65536


def peer_credentials(sock: socket.socket) -> Credentials:
    """The credentials of *sock*'s peer, as the kernel recorded them when it connected."""
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * _MAX_GROUPS)
        groups = tuple(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:  # before Linux 4.13: no groups beyond the primary one
        groups = ()
    return Credentials(uid, gid, groups, pid)


class _Pipe:
    """One direction of a relayed connection: bytes read from *src*, not yet written to *dst*."""

    __slots__ = ("dst", "eof", "pending", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.pending = memoryview(b"")
        self.eof = False


class _Relayed:
    """An accepted connection, its private twin, and the name the gRPC server sees."""

    def __init__(self, outer: socket.socket, inner: socket.socket, name: str) -> None:
        self.name = name
        self.up = _Pipe(outer, inner)
        self.down = _Pipe(inner, outer)


class PeerCredentialRelay:
    """Accepts on the public socket *path*; ``credentials(peer)`` names each call's caller.

    ``private_target`` is where the gRPC server must listen (and only there, for Unix clients).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dir = Path(tempfile.mkdtemp(prefix="kqd-relay-"))  # mode 0700, ours
        self.private_target = f"unix:{self._dir / 'grpc.sock'}"
        self._peers: dict[str, Credentials] = {}
        self._lock = threading.Lock()
        self._names = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="kqd-peer-relay", daemon=True)

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread.start()

    def credentials(self, peer: str) -> Credentials | None:
        """The caller behind gRPC's *peer* string, or None when it did not come through us."""
        with self._lock:
            return self._peers.get(peer)

    def stop_accepting(self) -> None:
        """Accept no new connection (shutdown); those relayed already go on."""
        if self._thread.is_alive():
            self._wake_w.send(b"s")

    def close(self) -> None:
        """Stop accepting, drop every relayed connection, remove the private directory."""
        if self._thread.is_alive():
            self._wake_w.send(b"x")
            self._thread.join()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        for entry in self._dir.iterdir():
            entry.unlink()
        self._dir.rmdir()

    # ------------------------------------------------------------------ the relay thread

    def _run(self) -> None:
        relayed: set[_Relayed] = set()
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.fileobj is self._wake_r:
                        if self._wake_r.recv(1) == b"x":
                            return
                        self._selector.unregister(self._listener)
                        continue
                    if key.fileobj is self._listener:
                        conn = self._accept()
                        if conn is not None:
                            relayed.add(conn)
                        continue
                    conn = key.data
                    if conn in relayed and not self._serve(conn):
                        self._drop(conn)
                        relayed.discard(conn)
        finally:
            for conn in relayed:
                self._drop(conn)
            self._selector.close()

    def _accept(self) -> _Relayed | None:
        try:
            outer, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # EMFILE and the like: refuse this one, keep serving
            log.warning("cannot accept a connection: %s", exc.strerror)
            return None
        inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._names += 1
        name = str(self._dir / f"c{self._names}")
        try:
            creds = peer_credentials(outer)
            inner.bind(name)
            with self._lock:
                self._peers[f"unix:{name}"] = creds  # before the server can see the name
            inner.connect(self.private_target.removeprefix("unix:"))
        except OSError as exc:
            log.warning("cannot relay a connection: %s", exc.strerror)
            self._forget(name)
            outer.close()
            inner.close()
            return None
        outer.setblocking(False)
        inner.setblocking(False)
        conn = _Relayed(outer, inner, name)
        self._selector.register(outer, selectors.EVENT_READ, conn)
        self._selector.register(inner, selectors.EVENT_READ, conn)
        return conn

    def _serve(self, conn: _Relayed) -> bool:
        """Move what can be moved for *conn*; False once it is over (both directions ended,
        or a side broke)."""
        if not (self._move(conn.up) and self._move(conn.down)):
            return False
        self._rearm(conn)
        up, down = conn.up, conn.down
        return not (up.eof and down.eof and not up.pending and not down.pending)

    def _move(self, pipe: _Pipe) -> bool:
        """Read from the source when nothing is pending, then write; False on a broken side."""
        try:
            if not pipe.pending and not pipe.eof:
                data = pipe.src.recv(_CHUNK)
                if data:
                    pipe.pending = memoryview(data)
                else:
                    pipe.eof = True
            if pipe.pending:
                sent = pipe.dst.send(pipe.pending)
                pipe.pending = pipe.pending[sent:]
            if pipe.eof and not pipe.pending:
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                log.debug("relay: %s", exc)
            return False
        return True

    def _rearm(self, conn: _Relayed) -> None:
        """Each side waits to read while its outgoing direction is drained, and to write
        while the incoming one has bytes pending; a side with neither is not watched."""
        watched = self._selector.get_map()
        for sock, out_pipe, in_pipe in (
            (conn.up.src, conn.up, conn.down),
            (conn.down.src, conn.down, conn.up),
        ):
            mask = 0
            if not out_pipe.pending and not out_pipe.eof:
                mask |= selectors.EVENT_READ
            if in_pipe.pending:
                mask |= selectors.EVENT_WRITE
            key = watched.get(sock)
            if key is None and mask:
                self._selector.register(sock, mask, conn)
            elif key is not None and not mask:
                self._selector.unregister(sock)
            elif key is not None and key.events != mask:
                self._selector.modify(sock, mask, conn)

    def _drop(self, conn: _Relayed) -> None:
        self._forget(conn.name)  # first: no later connection may inherit the name
        for sock in (conn.up.src, conn.down.src):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

    def _forget(self, name: str) -> None:
        with self._lock:
            self._peers.pop(f"unix:{name}", None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
