"""What the sync and asyncio clients share: request building, and how a stream resumes.

Each client class only adds how a call is made (blocking or awaited); the meaning of every
request and the resume rules live here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from kqclient.errors import DaemonUnavailable, ResumeGap
from kqd.core.control_args import check_control_args
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2
from kqd.wire import duration, sequenced_from_wire, to_wire

# How long a broken stream keeps trying to reconnect, and the pause between tries.
RECONNECT_SECONDS = 30.0
RECONNECT_PAUSE = 0.05
# A blocking Kevent call's gRPC deadline is the wait plus this margin for the round trip.
CALL_MARGIN_SECONDS = 30.0


def create_request(lease: float | None) -> kqd_pb2.CreateQueueRequest:
    """CreateQueue, asking for a *lease* in seconds (None: the daemon's)."""
    return kqd_pb2.CreateQueueRequest(lease=None if lease is None else duration(lease))


def connection_fields(address: str, retry_for: float | None) -> dict[str, Any]:
    """OpenConnection's fields (retry_for in seconds, None: one try)."""
    fields: dict[str, Any] = {"address": address}
    if retry_for is not None:
        fields["retry_for"] = duration(retry_for)
    return fields


class QueueRequests:
    """The state of one remote queue on the client side and the requests that act on it."""

    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
        # The sequence number of the last event stream() yielded (of the last batch
        # stream_batches() yielded): resume after it, here or in another process.
        self.last_sequence = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed kqueue object")

    def fileno(self) -> int:
        raise OSError("a remote kqueue has no local descriptor; use stream() or control()")

    def _kevent_call(
        self, changelist: Iterable[kevent] | None, max_events: object, timeout: object
    ) -> tuple[kqd_pb2.KeventRequest, float | None]:
        """The Kevent request for ``control()``, checked by the core's rules, and its deadline."""
        changes, events, wait = check_control_args(changelist, max_events, timeout)
        self._check_open()
        request = kqd_pb2.KeventRequest(
            queue_id=self.queue_id,
            changes=[to_wire(c) for c in changes],
            max_events=events,
            timeout=None if wait is None else duration(wait),
        )
        return request, None if wait is None else wait + CALL_MARGIN_SECONDS

    def _register_call(self, changes: Iterable[kevent]) -> kqd_pb2.RegisterRequest:
        self._check_open()
        return kqd_pb2.RegisterRequest(
            queue_id=self.queue_id, changes=[to_wire(c) for c in changes]
        )

    def _descriptor_call(self, method: str, **fields: Any) -> tuple[str, Any]:
        """(method, request) for Open, OpenPeerFd, OpenConnection and CloseDescriptor."""
        self._check_open()
        request_type = getattr(kqd_pb2, f"{method}Request")
        return method, request_type(queue_id=self.queue_id, **fields)

    def _close_call(self) -> kqd_pb2.CloseQueueRequest | None:
        """The CloseQueue request, or None when already closed."""
        if self._closed:
            return None
        self._closed = True
        return kqd_pb2.CloseQueueRequest(queue_id=self.queue_id)


class Resume:
    """One stream's position: which request resumes it, which events are new, when to give up.

    The position is the queue's ``last_sequence``, which the caller advances as it hands events
    out (so a consumer that stops halfway through a message resumes after the last event it
    saw). Within one connection the numbers must follow on without a gap: anything else is a
    broken promise, raised as ResumeGap rather than passed on.
    """

    def __init__(self, queue: QueueRequests, after: int | None, max_batch: int) -> None:
        queue._check_open()
        self.queue = queue
        self.max_batch = max_batch
        if after is not None:
            queue.last_sequence = after
        self._received = queue.last_sequence
        self._give_up: float | None = None

    def request(self) -> kqd_pb2.WaitRequest:
        self._received = self.queue.last_sequence
        return kqd_pb2.WaitRequest(
            queue_id=self.queue.queue_id,
            after_sequence=self._received,
            max_batch=self.max_batch,
            packed=True,
        )

    def accept(self, response: kqd_pb2.WaitResponse) -> tuple[int, list[kevent]]:
        """The events of *response* not received yet, and the sequence number of the first
        (the others follow on by one)."""
        self._give_up = None
        first, last, events = sequenced_from_wire(response)
        if events and first <= self._received:  # only a resume repeats
            events = events[self._received + 1 - first :]
            first = self._received + 1
        if not events:
            return 0, []
        expected = self._received + 1
        if first != expected or last != expected + len(events) - 1:
            raise ResumeGap(
                f"the stream skipped sequence numbers: expected {expected}, got {first}.."
                f"{last}; events may be lost, re-read the state you watch",
                first,
            )
        self._received = last
        return first, events

    def retry_after(self, exc: Exception) -> float:
        """Seconds to pause before reconnecting; re-raises *exc* when it is not worth it."""
        if not isinstance(exc, DaemonUnavailable):
            raise exc
        now = time.monotonic()
        self._give_up = self._give_up or now + RECONNECT_SECONDS
        if now > self._give_up:
            raise exc
        return RECONNECT_PAUSE
