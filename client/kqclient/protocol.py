"""What the sync and asyncio clients share: request building, and how a stream resumes.

Each client class only adds how a call is made (blocking or awaited); the meaning of every
request and the resume rules live here once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from google.protobuf.duration_pb2 import Duration

from kqclient.errors import DaemonUnavailable
from kqd.core.control_args import check_control_args
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2
from kqd.wire import events_from_wire, to_wire

# How long a broken stream keeps trying to reconnect, and the pause between tries.
RECONNECT_SECONDS = 30.0
RECONNECT_PAUSE = 0.05
# A blocking Kevent call's gRPC deadline is the wait plus this margin for the round trip.
CALL_MARGIN_SECONDS = 30.0


def create_request(lease: float | None) -> kqd_pb2.CreateQueueRequest:
    """CreateQueue, asking for a *lease* in seconds (None: the daemon's)."""
    return kqd_pb2.CreateQueueRequest(lease=None if lease is None else _duration(lease))


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


class QueueRequests:
    """The state of one remote queue on the client side and the requests that act on it."""

    def __init__(self, queue_id: str) -> None:
        self.queue_id = queue_id
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
            timeout=None if wait is None else _duration(wait),
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
    """One stream's position: which request resumes it, which events are new, when to give up."""

    def __init__(self, queue: QueueRequests, after: int | None, max_batch: int) -> None:
        queue._check_open()
        self.queue = queue
        self.max_batch = max_batch
        if after is not None:
            queue.last_sequence = after
        self._give_up: float | None = None

    def request(self) -> kqd_pb2.WaitRequest:
        return kqd_pb2.WaitRequest(
            queue_id=self.queue.queue_id,
            after_sequence=self.queue.last_sequence,
            max_batch=self.max_batch,
        )

    def accept(self, response: kqd_pb2.WaitResponse) -> list[kevent]:
        """The events of *response* not delivered yet (a resumed stream may repeat some)."""
        self._give_up = None
        items = response.events
        last = self.queue.last_sequence
        if items and items[0].sequence <= last:  # sequences ascend: only a resume repeats
            items = [item for item in items if item.sequence > last]
        if not items:
            return []
        self.queue.last_sequence = items[-1].sequence
        return events_from_wire(item.event for item in items)

    def retry_after(self, exc: Exception) -> float:
        """Seconds to pause before reconnecting; re-raises *exc* when it is not worth it."""
        if not isinstance(exc, DaemonUnavailable):
            raise exc
        now = time.monotonic()
        self._give_up = self._give_up or now + RECONNECT_SECONDS
        if now > self._give_up:
            raise exc
        return RECONNECT_PAUSE
