"""kevent <-> kqd.v1.Kevent, and how an errno travels with a gRPC status.

Shared by the daemon and the client, so both sides translate the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.duration_pb2 import Duration

from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2

# Trailing metadata key: the errno behind a failed call, so the client can raise OSError(errno).
ERRNO_KEY = "kqd-errno"
# google.protobuf.Duration's documented range, +-10,000 years.
_MAX_DURATION_SECONDS = 315_576_000_000


def seconds_of(duration: Duration, what: str) -> float:
    """A Duration in seconds; ValueError, naming *what*, when it is negative or malformed (out
    of google.protobuf.Duration's range, or seconds and nanos of opposite signs)."""
    seconds, nanos = duration.seconds, duration.nanos
    if abs(seconds) > _MAX_DURATION_SECONDS or abs(nanos) > 999_999_999:
        raise ValueError(
            f"{what} is not a valid Duration (seconds {seconds}, nanos {nanos}): seconds must be "
            f"within +-{_MAX_DURATION_SECONDS} and nanos within +-999,999,999"
        )
    if (seconds < 0 < nanos) or (nanos < 0 < seconds):
        raise ValueError(
            f"{what} is not a valid Duration (seconds {seconds}, nanos {nanos}): seconds and "
            "nanos must have the same sign"
        )
    total = seconds + nanos / 1e9
    if total < 0:
        raise ValueError(f"{what} must not be negative, got {total}s")
    return total


def duration(seconds: float) -> Duration:
    """*seconds* as a Duration, clamped to its range."""
    message = Duration()
    message.FromNanoseconds(int(min(seconds, _MAX_DURATION_SECONDS) * 1e9))
    return message


def to_wire(ev: kevent) -> kqd_pb2.Kevent:
    return kqd_pb2.Kevent(
        ident=ev.ident,
        filter=ev.filter,
        flags=ev.flags,
        fflags=ev.fflags,
        data=ev.data,
        udata=ev.udata,
    )


def fill_wire(message: kqd_pb2.Kevent, ev: kevent) -> None:
    """Set the fields of *message* in place (cheaper than building one, in large batches)."""
    message.ident, message.filter, message.flags = ev.ident, ev.filter, ev.flags
    message.fflags, message.data, message.udata = ev.fflags, ev.data, ev.udata


def from_wire(message: kqd_pb2.Kevent, extra_flags: int = 0) -> kevent:
    """A change from the wire, checked: OverflowError or TypeError for fields a kevent cannot
    hold (a filter beyond 16 bits, say)."""
    return kevent(
        message.ident,
        message.filter,
        message.flags | extra_flags,
        message.fflags,
        message.data,
        message.udata,
    )


def events_from_wire(messages: Iterable[kqd_pb2.Kevent]) -> list[kevent]:
    """Many events at once: the hot loop of a stream's reader."""
    make = kevent._trusted
    return [make(m.ident, m.filter, m.flags, m.fflags, m.data, m.udata) for m in messages]
