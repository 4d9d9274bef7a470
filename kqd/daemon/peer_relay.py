"""Who is calling on a Unix socket: the kernel's peer credentials, carried to the gRPC handlers.

grpc (core and Python) never reads SO_PEERCRED: ``context.peer()`` on a Unix socket says
``unix:`` and nothing else, and its "local" credentials check nothing. So kqd accepts the public
socket's connections itself. For each one it reads the kernel's record of the connecting
process (SO_PEERCRED: pid, uid, gid as of ``connect()``; SO_PEERGROUPS: its supplementary
groups), then opens a connection of its own to the gRPC server's *private* socket, bound first
to a fresh name in a private directory, and relays bytes both ways. gRPC reports that name as
the call's peer (``unix:<dir>/c1.17``), and the name maps to the credentials read at accept:
the file ``<dir>/c1.17.cred``, which the daemon reads on the connection's first call.

Why this cannot be forged: the private directory is mode 0700 and owned by the daemon's uid, so
no one else can connect to the private socket or create names or records in it; the
credentials come from the kernel, not from anything the client sends; a record is in place
(written under a temporary name, then renamed) before its name is bound and connected, and it
is removed with the name before the connection is closed. Names are never reused: a counter
per relay process, a generation number per process the daemon starts, a fresh directory per
daemon. So the daemon may keep the records it has read (a bounded cache): a name it has
cached can never again belong to another connection.

Why a process of its own (``relay_process``), not a thread: copying bytes in Python holds the
GIL, and a relay thread took turns on it with the asyncio loop and gRPC's threads (~27% of the
daemon's samples under a streaming load; a health Check cost ~70 µs more over the Unix socket
than over loopback TCP, against ~20 µs with the relay in its own process, on a 2-core machine).
The relay process is a fresh interpreter running the standard library only, started with
``subprocess`` (exec, never a fork of a daemon whose gRPC threads are running). The daemon binds
and listens on the public socket itself, so its bind errors are the daemon's, and hands the
listening socket over; keeping its own copy, it can start another relay if one dies. The
records are files rather than messages to the daemon because a file is in place before the
connection is made, with no round trip: the daemon reads one on a connection's first call.

If the relay process dies unexpectedly the daemon logs it as an error and starts another
(unless the last one lived less than RESTART_AFTER seconds: then it stops serving that socket,
removes it, and says so: callers are told at once that there is no such socket, never left on
one that accepts and then says nothing). The connections the dead one relayed are cut; their clients
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kqd.daemon import relay_process
from kqd.daemon.credentials import Credentials
from kqd.daemon.relay_process import GRPC_SOCKET, RECORD_SUFFIX, STOP_ACCEPTING, read_record

log = logging.getLogger("kqd.daemon")

RESTART_AFTER = 10.0  # seconds: a relay that dies sooner after its start is not started again
CLOSE_BOUND = 5.0  # seconds close() waits for the relay to exit before killing it
_CACHED = 4096  # records kept (one per relayed connection, read on its first call)
_NAME = re.compile(r"c[0-9]+\.[0-9]+")
# A directory path this long leaves room under sun_path's 107 bytes for "/.kqd-relay-XXXXXXXX/"
# and the longest relayed name ("c" + generation + "." + counter: up to ~40 bytes).
_DEEPEST = 40


def _private_directory(beside: Path) -> Path:
    """A new directory, mode 0700 and ours (mkdtemp), for gRPC's socket and the relayed names:
    next to the public socket, whose directory kqd may write (under systemd's
    ProtectSystem=strict, /tmp is read-only and only the RuntimeDirectory is writable); in the
    temporary directory when that one is too deep for socket names (sun_path holds 107 bytes).
    """
    if len(str(beside)) <= _DEEPEST:
        with contextlib.suppress(OSError):
            return Path(tempfile.mkdtemp(prefix=".kqd-relay-", dir=beside))
    return Path(tempfile.mkdtemp(prefix="kqd-relay-"))


class PeerCredentialRelay:
    """Accepts on the public socket *path* (in a process of its own, from ``start()``);
    ``credentials(peer)`` names each call's caller.

    ``private_target`` is where the gRPC server must listen (and only there, for Unix clients).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._dir = _private_directory(path.parent)
        self.private_target = f"unix:{self._dir / GRPC_SOCKET}"
        self._peer_prefix = f"unix:{self._dir}/"
        self._cache: dict[str, Credentials] = {}
        self._listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(str(path))
            self._listener.listen(256)
        except OSError:
            self._listener.close()
            self._dir.rmdir()
            raise
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._pidfd: int | None = None
        self._generation = 0
        self._started_at = 0.0
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start the relay process (from the running event loop, once gRPC listens)."""
        self._loop = asyncio.get_running_loop()
        self._spawn()

    @property
    def pid(self) -> int | None:
        """The relay process's pid while one runs (for operators and tests)."""
        return None if self._proc is None else self._proc.pid

    def credentials(self, peer: str) -> Credentials | None:
        """The caller behind gRPC's *peer* string, or None when it did not come through us
        (or its connection is already gone)."""
        creds = self._cache.get(peer)
        if creds is not None:
            return creds
        name = peer.removeprefix(self._peer_prefix)
        if name == peer or not _NAME.fullmatch(name):
            return None
        try:
            uid, gid, pid, groups = read_record((self._dir / (name + RECORD_SUFFIX)).read_bytes())
        except (OSError, ValueError):  # gone with its connection
            return None
        if len(self._cache) >= _CACHED:
            del self._cache[next(iter(self._cache))]  # the oldest
        creds = self._cache[peer] = Credentials(uid, gid, groups, pid)
        return creds

    def stop_accepting(self) -> None:
        """Accept no new connection (shutdown); those relayed already go on. Callers that
        connect from now on are refused instead of waiting in the backlog until close()."""
        self._stopping = True
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.send(STOP_ACCEPTING)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        """Stop accepting, drop every relayed connection (the relay process exits, and is
        waited for), remove the private directory."""
        self._stopping = True
        proc = self._proc
        self._release()  # its control socket closes: the relay drops everything and exits
        if proc is not None:
            try:
                proc.wait(CLOSE_BOUND)
            except subprocess.TimeoutExpired:
                log.error(
                    "kqd's peer-credential relay did not exit within %ss; killed", CLOSE_BOUND
                )
                proc.kill()
                proc.wait()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with contextlib.suppress(FileNotFoundError):  # the relay removes it when it exits
            for entry in self._dir.iterdir():
                entry.unlink(missing_ok=True)
            self._dir.rmdir()

    # ------------------------------------------------------------------ the relay process

    def _spawn(self) -> None:
        assert self._loop is not None and self._listener is not None
        self._generation += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        listening = self._listener.fileno()
        args = [str(listening), str(theirs.fileno()), str(self._dir), str(self._generation)]
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", relay_process.__file__, *args],
                pass_fds=(listening, theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # stderr stays the daemon's: a crash's traceback
                cwd="/",
                env={},
                start_new_session=True,  # a terminal's ^C is the daemon's to handle
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._started_at = time.monotonic()
        self._control = ours
        self._pidfd = os.pidfd_open(self._proc.pid)
        self._loop.add_reader(ours.fileno(), self._on_message)
        self._loop.add_reader(self._pidfd, self._on_exit)

    def _on_message(self) -> None:
        """Log the relay's warnings (cannot accept, cannot relay) as the daemon's own."""
        control = self._control
        while control is not None:
            try:
                message = control.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:  # it is exiting: _on_exit tells the rest
                assert self._loop is not None
                self._loop.remove_reader(control.fileno())
                return
            log.warning("%s on %s", message.decode(errors="replace"), self.path)

    def _on_exit(self) -> None:
        """The relay process has exited without being asked to: log it, then start another,
        or stop serving the socket when the last one did not last."""
        proc = self._proc
        assert proc is not None
        status = proc.wait()
        lived = time.monotonic() - self._started_at
        self._release()
        self._sweep()
        how = f"exit status {status}"
        if status < 0:
            try:
                how = f"killed by {signal.Signals(-status).name}"
            except ValueError:
                how = f"killed by signal {-status}"
        if self._stopping or self._listener is None:
            log.error(
                "kqd's peer-credential relay for %s exited during shutdown (%s)", self.path, how
            )
            return
        if lived >= RESTART_AFTER:
            log.error(
                "kqd's peer-credential relay for %s exited (%s); its connections are cut, "
                "starting another",
                self.path,
                how,
            )
            try:
                self._spawn()
                return
            except OSError as exc:
                how = f"{how}, and another did not start: {exc}"
        log.error(
            "kqd no longer serves %s: its peer-credential relay exited %.1fs after it started "
            "(%s); callers there are refused. Restart kqd",
            self.path,
            lived,
            how,
        )
        self._listener.close()
        self._listener = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _release(self) -> None:
        """Forget the current relay process: stop watching it, close our end of CONTROL."""
        if self._loop is not None:
            for fd in (self._pidfd, self._control.fileno() if self._control else None):
                if fd is not None and fd >= 0:
                    self._loop.remove_reader(fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if self._control is not None:
            self._control.close()
            self._control = None
        self._proc = None

    def _sweep(self) -> None:
        """Remove what a dead relay left in the private directory (its records and names):
        everything but gRPC's socket."""
        for entry in self._dir.iterdir():
            if entry.name != GRPC_SOCKET:
                entry.unlink(missing_ok=True)
