"""Acting with a caller's credentials: open a path, connect a Unix socket, vet a pidfd_getfd.

A caller must get through kqd exactly what it could get by itself on the daemon's host, and kqd
often runs as root. Checking permissions first and then opening as root would leave a gap (the
path can change in between) and would re-implement the kernel badly (ACLs, mount flags, LSMs).
So we let the kernel decide, by doing the operation with the caller's credentials.

Why a helper process, and not a thread that switches credentials. Linux keeps credentials per
*thread* (task->cred); path lookup checks search permission on every directory with the thread's
fsuid/fsgid and supplementary groups, so a lookup under a 0700 directory fails with EACCES before
the name is even looked up (a caller cannot probe for ENOENT there). A dedicated thread could
switch fsuid/fsgid/groups around each open, with raw syscalls only (glibc's setuid and setgroups
wrappers broadcast the change to every thread, as POSIX wants per-process credentials). That is
not enough for connect(): the kernel records the connecting task's *effective* credentials in
the socket (SO_PEERCRED reports euid/egid), so the server would see the daemon's uid. Switching
a thread's euid too would fix that, but a thread of the daemon would then run with a
half-dropped identity among objects shared with every other thread, and a missed switch back is
a privilege bug. Instead kqd keeps one small, long-lived helper process per distinct caller
identity (uid, gid, groups): started as root, it imports what it needs and then drops real,
effective, saved and filesystem ids and groups for good (which clears its capabilities). Every
check the kernel makes for it -- DAC and ACLs on each path component, write permission on a
socket's inode, the credentials a server reads with SO_PEERCRED (the helper's pid, the caller's
uid and gid) -- uses exactly the caller's identity, at the moment of the operation.

The helper passes each new descriptor back with SCM_RIGHTS: the daemon gets the same open file
description (O_NONBLOCK lives there and survives the trip; FD_CLOEXEC belongs to the descriptor
and comes from MSG_CMSG_CLOEXEC). It starts as root and drops after exec because the interpreter
and its standard library need not be readable by the caller (an interpreter under a 0700 home is
common). Changing the effective uid makes it non-dumpable (fs.suid_dumpable is 0 by default): the
caller's uid can kill its helper (the next request starts a new one, the requests in flight fail
with EIO) but cannot ptrace it or read its memory. Helpers idle for *idle_seconds* are stopped; at
most *max_helpers* live at once (the least recently used idle one makes room); one that does not
answer within *request_timeout* (a hung file system) is killed, and its requests fail with
ETIMEDOUT. The asyncio loop never blocks: answers are read with add_reader, the helper is started
from a worker thread, and its exit is seen through a pidfd. A caller with the daemon's own uid is
served directly (in a worker thread, since an open can block on a remote file system, and with
the daemon's groups); a daemon that is not root serves only its own uid and refuses the rest.
What the helper cannot carry: the daemon's LSM label (SELinux, AppArmor) stays its own, and a
uid-0 caller is served as the daemon whatever capabilities it had dropped (SO_PEERCRED does not
tell).

Why pidfd_getfd is vetted here rather than done by the helper: the kernel allows it under
PTRACE_MODE_ATTACH_REALCREDS, and Yama's ptrace_scope 1 (the default on many distributions)
also wants the tracer to be an ancestor of the target. The helper is nobody's ancestor, so the
kernel would refuse it what the caller may do itself. :meth:`CallerAccess.check_getfd` mirrors the
check instead, and :meth:`CallerAccess.getfd` closes the gap between check and use: it holds a
pidfd (the pid cannot be reused under it), checks, duplicates, and checks again. Any credential
change of the target in between either shows in its ids or makes it non-dumpable (the kernel
resets dumpability whenever euid, egid, fsuid or fsgid change), which the second check sees.
The kernel checks the tracer's *real* uid; SO_PEERCRED gives the caller's effective one, which
differs only for a setuid caller.

Costs, measured on a 2-core machine (root daemon, caller another uid): the first open for an
identity, which starts its helper, takes 13-18 ms; each open after that 0.07 ms (median; p99
0.13 ms; about 0.025 ms each when many are in flight), the same as an open done directly in a
worker thread (0.075 ms), against 0.002 ms for a bare os.open on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable

from kqd.core.linux import syscalls
from kqd.daemon import caller_helper
from kqd.daemon.caller_helper import ANSWER, MAX_PATH_BYTES, OP_CONNECT_UNIX, OP_OPEN, REQUEST
from kqd.daemon.credentials import Credentials

YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
_IN_FLIGHT = 8  # per helper; below net.unix.max_dgram_qlen (10), so a send never waits
_ANSWER_BYTES = ANSWER.size + 1024  # room for a failed start's reason
_FD = struct.Struct("i")


_Key = tuple[int, int, tuple[int, ...]]


def _key(creds: Credentials) -> _Key:
    return creds.uid, creds.gid, tuple(sorted(set(creds.groups)))


def _check_path(path: str, *, nul_allowed: bool = False) -> bytes:
    data = os.fsencode(path)
    if not nul_allowed and b"\0" in data:
        raise ValueError(f"path {path!r} contains a null byte")
    if len(data) > MAX_PATH_BYTES:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
    return data


def _recv_answer(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One message and the descriptors that came with it, close-on-exec from the start
    (socket.recv_fds drops its flags argument in Python 3.11)."""
    message, ancillary, flags, _ = sock.recvmsg(
        _ANSWER_BYTES, socket.CMSG_SPACE(_FD.size), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD.size
            fds += [fd for (fd,) in _FD.iter_unpack(data[:usable])]
    return message, fds, flags


def _close_result(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result())


def _retrieve(future: asyncio.Future) -> None:
    """Mark a future's exception as seen: the request that wanted it may have been cancelled."""
    if not future.cancelled():
        future.exception()


async def _in_thread(operation: Callable[[bytes], int], data: bytes) -> int:
    """``operation(data)`` in a worker thread; a descriptor it opens after a cancellation is
    closed."""
    future = asyncio.get_running_loop().run_in_executor(None, operation, data)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_result)
        raise


class _Helper:
    """One helper process acting as *key*, its socket, and the requests it has not answered."""

    def __init__(
        self, key: _Key, on_retired: Callable[[_Helper], None], on_reaped: Callable[[_Helper], None]
    ) -> None:
        self.key = key
        self._on_retired = on_retired
        self._on_reaped = on_reaped
        self._loop = asyncio.get_running_loop()
        self._sock, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.setblocking(False)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self.ready.add_done_callback(_retrieve)
        self.pending: dict[int, tuple[asyncio.Future[int], str]] = {}
        self.users = 0  # requests between their start and their end
        self.last_used = self._loop.time()
        self.closed: tuple[int, str] | None = None  # (errno, reason) once retired
        self._slots = asyncio.Semaphore(_IN_FLIGHT)
        self._next_id = 0
        self._idle: asyncio.TimerHandle | None = None
        self._pidfd: int | None = None

    @property
    def busy(self) -> bool:
        return self.users > 0 or bool(self.pending)

    def describe(self) -> str:
        uid, gid, groups = self.key
        return f"kqd's helper acting as uid {uid} (gid {gid}, groups {list(groups)})"

    # ------------------------------------------------------------------ start

    def _spawn(self) -> subprocess.Popen[bytes]:
        uid, gid, groups = self.key
        fd = self._theirs.fileno()
        command = [sys.executable, "-I", "-S", caller_helper.__file__, str(fd), str(uid), str(gid)]
        return subprocess.Popen(
            [*command, ",".join(map(str, groups))],
            pass_fds=(fd,),
            # A process the caller's uid owns holds nothing of the daemon's but its socket: no
            # environment (tokens), no log descriptor, no working directory, no terminal.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env={},
            start_new_session=True,
        )

    async def start(self, idle_seconds: float) -> None:
        """Start the process; ``ready`` resolves when it has become the caller."""
        self._idle_seconds = idle_seconds
        try:
            proc = await self._loop.run_in_executor(None, self._spawn)
        except OSError as exc:
            self.retire(exc.errno or errno.EIO, f"{self.describe()} did not start: {exc}")
            self._on_reaped(self)
            return
        finally:
            self._theirs.close()
        self.proc = proc
        if self.closed is not None:  # retired while starting
            self._reap()
            return
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    # ------------------------------------------------------------------ requests

    async def request(self, op: int, data: bytes, path: str, timeout: float) -> int:
        """Send one request and return the descriptor, or raise the kernel's OSError."""
        self.users += 1
        self.last_used = self._loop.time()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.ready)
                await self._slots.acquire()
                self._raise_if_closed()
                self._next_id = self._next_id % 0xFFFFFFFF + 1  # id 0 is the start message
                future: asyncio.Future[int] = self._loop.create_future()
                future.add_done_callback(_retrieve)
                try:
                    self._sock.send(REQUEST.pack(self._next_id, op) + data)
                except OSError as exc:
                    self._slots.release()
                    raise OSError(exc.errno, f"{self.describe()} cannot take it: {exc}") from None
                self.pending[self._next_id] = (future, path)
                return await future  # cancelling it makes _answer close the descriptor
        except TimeoutError:
            self.retire(errno.ETIMEDOUT, f"{self.describe()} did not answer within {timeout}s")
            self._raise_if_closed()
            raise
        finally:
            self.users -= 1
            self._maybe_idle()

    def _raise_if_closed(self) -> None:
        if self.closed is not None:
            raise OSError(*self.closed)

    def _on_readable(self) -> None:
        while self.closed is None:
            try:
                message, fds, flags = _recv_answer(self._sock)
            except BlockingIOError:
                return
            except ConnectionResetError:  # it died with our requests unread
                message, fds, flags = b"", [], 0
            if not message:
                self.retire(errno.EIO, f"{self.describe()} exited before answering; retry")
                return
            try:
                fds = self._answer(message, fds, flags)
            finally:
                for fd in fds:
                    os.close(fd)

    def _answer(self, message: bytes, fds: list[int], flags: int) -> list[int]:
        """Deliver one answer; returns the descriptors left to close."""
        truncated = flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
        if truncated or len(message) < ANSWER.size:
            self.retire(errno.EIO, f"{self.describe()} sent a malformed answer; stopped")
            return fds
        request_id, code = ANSWER.unpack_from(message)
        if request_id == 0 and not fds and not self.ready.done():
            if code:
                reason = message[ANSWER.size :].decode(errors="replace")
                self.retire(code, f"{self.describe()} could not take that identity: {reason}")
            else:
                self.ready.set_result(None)
                self._maybe_idle()
            return fds
        entry = self.pending.pop(request_id, None)
        if entry is None or (code == 0) != (len(fds) == 1):
            self.retire(errno.EIO, f"{self.describe()} sent an unexpected answer; stopped")
            return fds
        self._slots.release()
        future, path = entry
        if not future.cancelled():
            if code:
                future.set_exception(OSError(code, os.strerror(code), path))
            else:
                future.set_result(fds.pop())
        self._maybe_idle()
        return fds

    # ------------------------------------------------------------------ end

    def _maybe_idle(self) -> None:
        if self.closed is None and self.ready.done() and not self.busy and self._idle is None:
            self._idle = self._loop.call_later(self._idle_seconds, self._retire_idle)

    def _retire_idle(self) -> None:
        self._idle = None
        if not self.busy:
            self.retire(errno.EIO, f"{self.describe()} was stopped while idle")

    def retire(self, code: int, reason: str, *, wait: bool = False) -> None:
        """Stop the helper: fail what it has not answered with OSError(code, reason), kill it,
        and reap it (through a pidfd, or at once with *wait*)."""
        if self.closed is None:
            self.closed = (code, reason)
            self._on_retired(self)
            if self._idle is not None:
                self._idle.cancel()
            if self.proc is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            if not self.ready.done():
                self.ready.set_exception(OSError(code, reason))
            for future, _ in self.pending.values():
                if not future.done():
                    future.set_exception(OSError(code, reason))
                self._slots.release()
            self.pending.clear()
        if self.proc is not None:
            self._reap(wait)

    def _reap(self, wait: bool = False) -> None:
        """Kill and reap the process; without *wait*, a pidfd tells the loop when it is gone."""
        assert self.proc is not None
        self.proc.kill()
        if wait or self._loop.is_closed():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1.0)  # SIGKILLed: only a process stuck in the kernel outlasts this
        elif self.proc.poll() is None:
            if self._pidfd is None:
                self._pidfd = os.pidfd_open(self.proc.pid)
                self._loop.add_reader(self._pidfd, self._reap)
            return
        if self._pidfd is not None:
            if not self._loop.is_closed():
                self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.proc.returncode is not None:
            self._on_reaped(self)


class CallerAccess:
    """Acts with a caller's credentials. One per daemon, used from its asyncio loop; close()
    releases everything (helpers, their sockets, their pidfds)."""

    def __init__(
        self,
        *,
        max_helpers: int = 32,
        idle_seconds: float = 60.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.max_helpers = max_helpers
        self.idle_seconds = idle_seconds
        self.request_timeout = request_timeout
        self._euid = os.geteuid()
        self._helpers: dict[_Key, _Helper] = {}  # the live ones, one per identity
        self._exiting: set[_Helper] = set()  # every helper not reaped yet, live ones included
        self._closed = False

    # ------------------------------------------------------------------ the operations

    async def open(self, creds: Credentials, path: str) -> int:
        """os.open(path, O_RDONLY|O_NONBLOCK|O_CLOEXEC) as the caller: an fd in the daemon's
        process, or OSError with the kernel's errno (EACCES under a 0700 directory, never a
        probe-able ENOENT there)."""
        data = _check_path(path)
        if self._is_direct(creds):
            return await _in_thread(caller_helper.open_path, data)
        return await self._ask(creds, OP_OPEN, data, path)

    async def connect_unix(self, creds: Credentials, path: str) -> int:
        """A non-blocking SOCK_STREAM connect started as the caller (the server's SO_PEERCRED
        shows the caller's uid and gid, and the helper's pid); the fd, or OSError with the
        kernel's errno: EACCES without write permission on the socket, ECONNREFUSED with no
        listener, EAGAIN with a full backlog (a Unix connect never stays in progress). A path
        starting with a null byte names an abstract socket."""
        data = _check_path(path, nul_allowed=True)
        if self._is_direct(creds):
            return await _in_thread(caller_helper.connect_unix, data)
        return await self._ask(creds, OP_CONNECT_UNIX, data, path)

    def check_getfd(self, creds: Credentials, pid: int) -> None:
        """Raise PermissionError unless the caller could pidfd_getfd process *pid* itself.

        The kernel's PTRACE_MODE_ATTACH_REALCREDS: the caller's own process always; uid 0 always;
        otherwise the target's real, effective and saved uids all equal the caller's uid, its
        gids the caller's gid, and it is dumpable (/proc/<pid>/status is owned by root when it is
        not; /proc/<pid> itself always shows the euid).
        Then Yama, where loaded: ptrace_scope 1 wants the caller to be the target or one of its
        ancestors (or uid 0), 2 uid 0, 3 nobody. The daemon's own process (any of its threads)
        and its helpers are refused to everyone. ProcessLookupError (ESRCH) for a missing pid."""
        tgid, status, owner = _read_process(pid)
        if tgid == os.getpid() or any(h.proc and h.proc.pid == tgid for h in self._exiting):
            raise PermissionError(errno.EPERM, f"process {pid} is kqd itself or its helper")
        if creds.pid is not None and tgid == creds.pid:
            return  # the kernel lets a process take its own descriptors, before any other check
        if creds.uid != 0:
            uids = [int(v) for v in status["Uid"].split()[:3]]
            gids = [int(v) for v in status["Gid"].split()[:3]]
            if uids != [creds.uid] * 3 or gids != [creds.gid] * 3:
                raise PermissionError(
                    errno.EPERM, f"process {pid} runs as uid {uids} gid {gids}, not as the caller"
                )
            if owner != creds.uid:
                raise PermissionError(errno.EPERM, f"process {pid} is not dumpable")
        _check_yama(creds, tgid, pid)

    def getfd(self, creds: Credentials, pid: int, target_fd: int) -> int:
        """A duplicate of descriptor *target_fd* of process *pid*, when the caller could take it
        itself: pidfd_open, check_getfd, pidfd_getfd, check_getfd again (see the module
        docstring); PermissionError, ProcessLookupError or the kernel's OSError otherwise."""
        pidfd = os.pidfd_open(pid)
        try:
            self.check_getfd(creds, pid)
            fd = syscalls.pidfd_getfd(pidfd, target_fd)
            try:
                self.check_getfd(creds, pid)
            except BaseException:
                os.close(fd)
                raise
            return fd
        finally:
            os.close(pidfd)

    # ------------------------------------------------------------------ lifecycle

    def helper_pids(self) -> list[int]:
        """The pids of the live helper processes (for tests and diagnostics)."""
        return [h.proc.pid for h in self._helpers.values() if h.proc is not None]

    def close(self) -> None:
        """Stop every helper and reap it (SIGKILL, then a bounded wait); later calls raise."""
        self._closed = True
        for helper in [*self._helpers.values(), *self._exiting]:
            helper.retire(errno.ESHUTDOWN, "kqd is shutting down", wait=True)
        self._helpers.clear()
        self._exiting.clear()

    # ------------------------------------------------------------------ inside

    def _is_direct(self, creds: Credentials) -> bool:
        """True when the daemon may act with its own rights: it has the caller's uid, or the
        caller is root (who could do all the daemon can, and more: a daemon that is not root,
        in a container say, then serves root with less than root's rights, never more).
        Raises when it cannot act as the caller."""
        if self._closed:
            raise OSError(errno.ESHUTDOWN, "kqd is shutting down")
        if creds.uid in (self._euid, 0):
            return True
        if self._euid != 0:
            raise PermissionError(
                errno.EPERM,
                f"kqd runs as uid {self._euid}, not as root: it cannot act as uid {creds.uid}",
            )
        return False

    async def _ask(self, creds: Credentials, op: int, data: bytes, path: str) -> int:
        key = _key(creds)
        helper = self._helpers.pop(key, None) or self._start(key)
        self._helpers[key] = helper  # most recently used last
        return await helper.request(op, data, path, self.request_timeout)

    def _start(self, key: _Key) -> _Helper:
        if len(self._helpers) >= self.max_helpers:
            idle = [h for h in self._helpers.values() if not h.busy]
            if not idle:
                raise OSError(
                    errno.EAGAIN, f"kqd acts for {len(self._helpers)} identities at once; retry"
                )
            min(idle, key=lambda h: h.last_used).retire(errno.EIO, "stopped to make room")
        helper = _Helper(key, self._retired, self._exiting.discard)
        self._exiting.add(helper)  # until reaped, whatever happens
        task = asyncio.get_running_loop().create_task(helper.start(self.idle_seconds))
        task.add_done_callback(_retrieve)
        return helper

    def _retired(self, helper: _Helper) -> None:
        if self._helpers.get(helper.key) is helper:
            del self._helpers[helper.key]


def _read_process(pid: int) -> tuple[int, dict[str, str], int]:
    """(tgid, /proc/<pid>/status fields, owner uid of that file), read through one directory
    descriptor so that all three describe the same process; ESRCH when there is none.

    The files under /proc/<pid> belong to root while the process is not dumpable, and to its
    euid otherwise; /proc/<pid> itself always shows the euid (procps stats it for that)."""
    try:
        dirfd = os.open(f"/proc/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ProcessLookupError(errno.ESRCH, f"no process {pid}") from None
    try:
        statfd = os.open("status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
        with open(statfd, encoding="utf-8", errors="replace") as f:
            owner = os.fstat(statfd).st_uid  # set at this lookup: root while not dumpable
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(errno.ESRCH, f"process {pid} exited") from None
    finally:
        os.close(dirfd)
    status = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return int(status["Tgid"]), status, owner


def _check_yama(creds: Credentials, tgid: int, pid: int) -> None:
    try:
        with open(YAMA_SCOPE, encoding="ascii") as f:
            scope = int(f.read())
    except FileNotFoundError:
        return  # Yama is not loaded
    if scope >= 3:
        raise PermissionError(errno.EPERM, "Yama ptrace_scope 3: no process may attach")
    if creds.uid == 0:
        return  # scopes 1 and 2 let CAP_SYS_PTRACE through
    if scope == 2:
        raise PermissionError(errno.EPERM, "Yama ptrace_scope 2: only root may attach")
    if scope == 1:
        if creds.pid is None:
            raise PermissionError(errno.EPERM, "Yama ptrace_scope 1 and the caller's pid unknown")
        if not _is_ancestor(creds.pid, tgid):
            raise PermissionError(
                errno.EPERM, f"Yama ptrace_scope 1: process {pid} does not descend from the caller"
            )


def _is_ancestor(ancestor: int, tgid: int) -> bool:
    """Is *ancestor* the process *tgid* or one of its parents (as Yama's task_is_descendant)?"""
    for _ in range(4096):
        if tgid == ancestor:
            return True
        if tgid <= 1:
            return False
        try:
            tgid = int(_read_process(tgid)[1]["PPid"])
        except ProcessLookupError:
            return False
    return False
