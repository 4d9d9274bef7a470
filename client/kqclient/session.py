"""One Session call of the synchronous client: changelists in; receipts and events out.

A Session is a bidirectional gRPC stream (see the proto): the daemon sends a changelist's
receipts and the queue's events interleaved, in one order. With a blocking API, whoever needs
the next message reads it, whatever thread that is: the consumer iterating ``stream()`` when it
wants events, or a thread calling ``register()`` when it wants its receipts — which may be the
consumer itself, between two events. So there is no reader thread (no extra hop between gRPC
and the consumer, which is the latency that matters), only a rule that one thread reads at a
time (``_reading``) and files what it read for whoever it belongs to: receipts by tag, event
messages in arrival order. A thread that finds another reading waits for it to finish and looks
again.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from kqclient.errors import KqdError, exception_for, translate
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2
from kqd.wire import events_from_wire, to_wire


class SessionEnded(Exception):  # noqa: N818 - reads as a state
    """The daemon ended the session with status OK (it is shutting down): resume elsewhere."""


class SessionStream:
    """A Session call started with *start* (a WaitRequest) on *stub*."""

    def __init__(self, stub: Any, start: kqd_pb2.WaitRequest, target: str) -> None:
        self._target = target
        self._outbox: queue.SimpleQueue[kqd_pb2.SessionRequest | None] = queue.SimpleQueue()
        self._outbox.put(kqd_pb2.SessionRequest(start=start))
        # gRPC consumes the request iterator in a thread of its own; None ends it (half-close).
        self._call = stub.Session(iter(self._outbox.get, None))
        self._responses: Iterator[kqd_pb2.SessionResponse] = self._call
        self._state = threading.Condition()
        self._reading = False
        self._events: deque[kqd_pb2.WaitResponse] = deque()
        self._replies: dict[int, kqd_pb2.SessionReceipts] = {}
        self._broken: Exception | None = None
        self._tags = itertools.count(1)

    def register(self, changes: list[kevent]) -> list[kevent]:
        """Apply *changes* as Register does: one receipt per change. Raises what a Register
        call would; DaemonUnavailable when the session broke first (the changes may or may not
        have been applied, as with a unary call whose connection broke)."""
        tag = next(self._tags)
        self._outbox.put(changes_request(tag, changes))
        return receipts_of(self._read_until(lambda: self._replies.pop(tag, None)), self._target)

    def next_events(self) -> kqd_pb2.WaitResponse:
        """The next events message (a WaitResponse). Raises the stream's error, translated,
        or SessionEnded."""
        return self._read_until(lambda: self._events.popleft() if self._events else None)

    def close(self) -> None:
        """Cancel the call (ends it on the daemon's side too) and end the request stream."""
        self._outbox.put(None)
        self._call.cancel()

    def _read_until(self, take: Callable[[], Any]) -> Any:
        """Read messages (one reader at a time) until *take* finds what the caller wants."""
        with self._state:
            while True:
                found = take()
                if found is not None:
                    return found
                if self._broken is not None:
                    raise self._broken
                if self._reading:
                    self._state.wait()
                    continue
                self._reading = True
                self._state.release()
                try:
                    response = self._read_one()
                finally:
                    self._state.acquire()
                    self._reading = False
                    self._state.notify_all()
                if isinstance(response, Exception):
                    self._broken = response
                elif response.HasField("receipts"):
                    self._replies[response.receipts.tag] = response.receipts
                else:
                    self._events.append(response.events)

    def _read_one(self) -> kqd_pb2.SessionResponse | Exception:
        """The next message, or the exception that ends the stream."""
        try:
            return next(self._responses)
        except StopIteration:
            return SessionEnded()
        except grpc.RpcError as error:
            return session_error(error, self._target)


def changes_request(tag: int, changes: list[kevent]) -> kqd_pb2.SessionRequest:
    return kqd_pb2.SessionRequest(
        changes=kqd_pb2.SessionChanges(tag=tag, changes=[to_wire(c) for c in changes])
    )


def receipts_of(reply: kqd_pb2.SessionReceipts, target: str) -> list[kevent]:
    """A changelist's receipts; raises what a Register call would have for a refused one."""
    if reply.code:
        code = next(
            (c for c in grpc.StatusCode if c.value[0] == reply.code), grpc.StatusCode.UNKNOWN
        )
        raise exception_for(code, reply.message, reply.errno or None, target)
    return events_from_wire(reply.receipts)


def session_error(error: grpc.RpcError, target: str) -> Exception:
    """What ends a session's readers and waiting changelists for a failed call. CANCELLED
    comes from this side (the stream or its client was closed): not worth a reconnect."""
    if error.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
        return KqdError("the stream was closed on this side (the stream, or its client)")
    return translate(error, target)
