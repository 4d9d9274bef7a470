"""kevent <-> kqd.v1.Kevent, and how an errno travels with a gRPC status.

Shared by the daemon and the client, so both sides translate the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def wait_response(
    items: Sequence[tuple[int, kevent]], last_sequence: int, packed: bool
) -> kqd_pb2.WaitResponse:
    """A WaitResponse carrying *items* (consecutive sequence numbers, in order): one message
    per event, or in columns (*packed*). Columns are filled a list at a time, which costs
    protobuf a fraction of a message per event: at high rates, building one Kevent message per
    event was most of the daemon's time."""
    response = kqd_pb2.WaitResponse(last_sequence=last_sequence)
    if packed:
        if items:
            columns = response.packed
            columns.first_sequence = items[0][0]
            events = [ev for _, ev in items]
            columns.ident.extend([ev.ident for ev in events])
            columns.filter.extend([ev.filter for ev in events])
            columns.flags.extend([ev.flags for ev in events])
            columns.fflags.extend([ev.fflags for ev in events])
            columns.data.extend([ev.data for ev in events])
            columns.udata.extend([ev.udata for ev in events])
        return response
    for sequence, ev in items:
        item = response.events.add()
        item.sequence = sequence
        message = item.event
        message.ident, message.filter, message.flags = ev.ident, ev.filter, ev.flags
        message.fflags, message.data, message.udata = ev.fflags, ev.data, ev.udata
    return response


def sequenced_from_wire(response: kqd_pb2.WaitResponse) -> tuple[int, int, list[kevent]]:
    """The events of a WaitResponse in either form: (first sequence, last sequence, events);
    (0, 0, []) for a heartbeat. The last is read from the message, not computed, so a caller
    can check the numbers follow on."""
    if response.HasField("packed"):
        columns = response.packed
        count = len(columns.ident)
        if not count:
            return 0, 0, []
        lists = (columns.filter, columns.flags, columns.fflags, columns.data, columns.udata)
        if any(len(column) != count for column in lists):
            raise ValueError("a packed WaitResponse whose columns differ in length")
        events = list(map(kevent._trusted, columns.ident, *lists))
        first = columns.first_sequence
        return first, first + count - 1, events
    items = response.events
    if not items:
        return 0, 0, []
    return items[0].sequence, items[-1].sequence, events_from_wire(i.event for i in items)


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
