"""kevent <-> kqd.v1.Kevent, and how an errno travels with a gRPC status.

Shared by the daemon and the client, so both sides translate the same way.
"""

from __future__ import annotations

from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2

# Trailing metadata key: the errno behind a failed call, so the client can raise OSError(errno).
ERRNO_KEY = "kqd-errno"


def to_wire(ev: kevent) -> kqd_pb2.Kevent:
    return kqd_pb2.Kevent(
        ident=ev.ident,
        filter=ev.filter,
        flags=ev.flags,
        fflags=ev.fflags,
        data=ev.data,
        udata=ev.udata,
    )


def from_wire(message: kqd_pb2.Kevent, extra_flags: int = 0) -> kevent:
    """Raises OverflowError/TypeError for fields kevent cannot hold (e.g. filter beyond 16 bits)."""
    return kevent(
        message.ident,
        message.filter,
        message.flags | extra_flags,
        message.fflags,
        message.data,
        message.udata,
    )
