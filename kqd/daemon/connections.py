"""OpenConnection's addresses: checked, resolved off the event loop, and connected without
blocking.

A host name is resolved in a worker thread with a bound (RESOLVE_SECONDS), so a slow resolver
holds up only the call that asked, never the loop every client shares. A TCP connect from the
daemon is started non-blocking: WRITE readiness means connected, EV_EOF with the errno means
refused. (A Unix-socket connect is made with the caller's rights instead, in caller_access.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import threading
from typing import Any

RESOLVE_SECONDS = 5.0
RETRY_SECONDS = 0.002  # documented at OpenConnectionRequest.retry_for
MAX_RETRY_SECONDS = 3600.0
MAX_RESOLVERS = 32

ConnectTarget = str | tuple[Any, ...]
_ADDRESS_FORMS = "give host:port (a port of 0..65535) or unix:/path"
_SUN_PATH_MAX = 107  # bytes of a Unix socket path (sockaddr_un.sun_path, NUL-terminated)


async def connection_target(address: str) -> tuple[socket.AddressFamily, ConnectTarget]:
    """What to connect to for *address* (``host:port``, ``[v6]:port`` or ``unix:/path``): the
    family and a target ``connect()`` takes without resolving. A host name is resolved here,
    in a thread, so a slow resolver holds up only this call (ETIMEDOUT after RESOLVE_SECONDS).
    ValueError, saying what is wrong, for anything else."""
    if "\x00" in address:
        raise ValueError(f"address {address!r} contains a NUL byte; {_ADDRESS_FORMS}")
    if address.startswith("unix:"):
        path = address.removeprefix("unix:").removeprefix("//")
        if not path:
            raise ValueError(f"address {address!r} has no path; give unix:/path")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(
                f"address {address!r}: a Unix socket path holds at most {_SUN_PATH_MAX} bytes"
            )
        return socket.AF_UNIX, path
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"address {address!r} is not usable; {_ADDRESS_FORMS}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = await asyncio.wait_for(_resolve(host, int(port), family), RESOLVE_SECONDS)
    except TimeoutError:
        raise OSError(
            errno.ETIMEDOUT, f"resolving {host!r} took over {RESOLVE_SECONDS:g}s", address
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ValueError(f"cannot resolve {address!r}: {reason}; check the host name") from None
    return family, infos[0][4]


_resolvers = threading.BoundedSemaphore(MAX_RESOLVERS)


async def _resolve(host: str, port: int, family: socket.AddressFamily) -> list[tuple]:
    """getaddrinfo in a daemon thread of its own. Not the loop's executor: a lookup that hangs
    past its bound would hold that executor's thread, and with it the daemon's exit, until the
    resolver gives up; a daemon thread is simply left behind. At most MAX_RESOLVERS at once."""
    if not _resolvers.acquire(blocking=False):
        raise OSError(errno.EAGAIN, f"{MAX_RESOLVERS} host name lookups already under way")
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[tuple]] = loop.create_future()

    def settle(result: list[tuple] | None, error: BaseException | None) -> None:
        if answer.done():
            return
        if error is None:
            answer.set_result(result or [])
        else:
            answer.set_exception(error)

    def lookup() -> None:
        try:
            result = socket.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
            outcome: tuple[list[tuple] | None, BaseException | None] = (result, None)
        except BaseException as exc:  # handed to the waiting call
            outcome = (None, exc)
        finally:
            _resolvers.release()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=lookup, name="kqd-resolve", daemon=True).start()
    return await answer


async def connect_when_listening(
    family: socket.AddressFamily, target: ConnectTarget, retry_for: float
) -> int:
    """A descriptor connected to *target*, trying again every RETRY_SECONDS while the connect
    is refused, for up to *retry_for* seconds; then a last non-blocking attempt (whose refusal
    the client's WRITE knote reports). Any other failure (unreachable network, ...) raises.

    A try must be cheap, since the wait may be long and the interval short: one socket serves
    the whole wait (on Linux a TCP socket whose connect was refused is back in its first state
    once connect(2) has reported the refusal, and may connect again), so a try is two
    connect(2) calls from a timer callback (~10 us), where a new socket awaited through
    ``loop.sock_connect`` and ``wait_for`` was ~50 us. On loopback the second call already
    knows the answer; a connect still under way (a remote host) is waited for with the
    socket's WRITE readiness. Between tries the loop sleeps: the cost of a wait is one wake-up
    of the daemon per try."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + retry_for
    sock = socket.socket(family, socket.SOCK_STREAM)
    fd = sock.fileno()
    outcome: asyncio.Future[bool] = loop.create_future()  # True: connected; False: time is up
    timer: asyncio.TimerHandle | None = None
    watching = False

    def settle(error: int) -> None:
        nonlocal timer
        if error in (0, errno.EISCONN):
            outcome.set_result(True)
        elif error in (errno.EINPROGRESS, errno.EALREADY):
            watch(True)
        elif error != errno.ECONNREFUSED:
            outcome.set_exception(OSError(error, os.strerror(error)))
        elif loop.time() + RETRY_SECONDS >= deadline:
            outcome.set_result(False)
        else:
            timer = loop.call_later(RETRY_SECONDS, attempt)

    def watch(on: bool) -> None:
        nonlocal watching
        if on and not watching:
            loop.add_writer(fd, connect_done)
        elif watching and not on:
            loop.remove_writer(fd)
        watching = on

    def attempt() -> None:
        if not outcome.done():
            error = sock.connect_ex(target)
            if error == errno.EINPROGRESS:
                # On loopback the handshake, or the refusal, is over by now: asking again
                # gives the answer without a wake-up of the loop for the socket's readiness.
                error = sock.connect_ex(target)
            settle(error)

    def connect_done() -> None:
        watch(False)
        if not outcome.done():
            # connect(2) again, not SO_ERROR: it reports the outcome and, when refused, leaves
            # the socket ready for the next try (after SO_ERROR took the error, the next
            # connect would only answer ECONNABORTED).
            settle(sock.connect_ex(target))

    try:
        sock.setblocking(False)
        attempt()
        try:
            async with asyncio.timeout_at(deadline):
                connected = await outcome
        except TimeoutError:
            connected = False  # a connect still under way at the deadline
    finally:
        if timer is not None:
            timer.cancel()
        watch(False)
        if not (outcome.done() and not outcome.cancelled() and outcome.exception() is None):
            sock.close()
    if connected:
        return sock.detach()
    sock.close()
    return start_connect(family, target)


def start_connect(family: socket.AddressFamily, target: ConnectTarget) -> int:
    """A descriptor with a non-blocking connect to *target* under way (a numeric address from
    ``connection_target``: nothing is resolved here)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect_ex(target)
    except BaseException:
        sock.close()
        raise
    return sock.detach()
