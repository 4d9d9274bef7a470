"""OpenConnection's addresses: checked, resolved off the event loop, and connected without
blocking.

A host name is resolved in a worker thread with a bound (RESOLVE_SECONDS), so a slow resolver
holds up only the call that asked, never the loop every client shares. A TCP connect from the
daemon is started non-blocking: WRITE readiness means connected, EV_EOF with the errno means
refused. (A Unix-socket connect is made with the caller's rights instead, in caller_access.)
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

RESOLVE_SECONDS = 5.0

ConnectTarget = str | tuple[Any, ...]
_ADDRESS_FORMS = "give host:port (a port of 0..65535) or unix:/path"
_SUN_PATH_MAX = 107  # bytes of a Unix socket path (sockaddr_un.sun_path, NUL-terminated)


async def connection_target(address: str) -> tuple[socket.AddressFamily, ConnectTarget]:
    """What to connect to for *address* (``host:port``, ``[v6]:port`` or ``unix:/path``): the
    family and a target ``connect()`` takes without resolving. A host name is resolved here,
    in a worker thread, so a slow resolver holds up only this call. ValueError, saying what is
    wrong, for anything else."""
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
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(
                host, int(port), family=family, type=socket.SOCK_STREAM
            ),
            RESOLVE_SECONDS,
        )
    except TimeoutError:
        raise OSError(
            errno.ETIMEDOUT, f"resolving {host!r} took over {RESOLVE_SECONDS:g}s", address
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ValueError(f"cannot resolve {address!r}: {reason}; check the host name") from None
    return family, infos[0][4]




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
