"""The synchronous client: ``connect()``, and remote kqueues with the core's ``control()``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from kqclient.errors import DaemonUnavailable, translate
from kqclient.target import KEEPALIVE_OPTIONS, resolve_target
from kqd.core.control_args import check_control_args
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from kqd.wire import from_wire, to_wire

# How long to keep trying to reconnect a stream before giving up, and the pause between tries.
RECONNECT_SECONDS = 30.0
RECONNECT_PAUSE = 0.05
# A blocking Kevent call's deadline is the wait plus this margin for the round trip.
CALL_MARGIN_SECONDS = 30.0


def timeout_message(timeout: float | None) -> Duration | None:
    if timeout is None:
        return None
    duration = Duration()
    duration.FromNanoseconds(int(timeout * 1e9))
    return duration


class Client:
    """A connection to one kqd daemon; a context manager that closes the channel."""

    def __init__(self, target: str | None = None) -> None:
        self.target = resolve_target(target)
        self._channel = grpc.insecure_channel(self.target, options=KEEPALIVE_OPTIONS)
        self.stub = kqd_pb2_grpc.KQueueServiceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Call *method*, turning a failed status into the matching Python exception."""
        try:
            return getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise translate(error, self.target) from None

    def kqueue(self, queue_id: str | None = None) -> RemoteKqueue:
        """A new remote queue, or (with *queue_id*) the existing one, e.g. after a restart."""
        if queue_id is None:
            queue_id = self.call("CreateQueue", kqd_pb2.CreateQueueRequest()).queue_id
        return RemoteKqueue(self, queue_id)


def connect(target: str | None = None) -> Client:
    """Connect to kqd at *target* (default: ``KQD_TARGET``, then the default socket)."""
    return Client(target)


class RemoteKqueue:
    """A kqueue hosted by the daemon: ``control()`` exactly as the core's, plus ``stream()``.

    Idents of READ/WRITE/VNODE knotes are descriptors of the queue's own table, opened with
    ``open()``, ``open_peer_fd()`` or ``open_connection()``.
    """

    def __init__(self, client: Client, queue_id: str) -> None:
        self.client = client
        self.queue_id = queue_id
        self.last_sequence = 0
        self._closed = False

    def __enter__(self) -> RemoteKqueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kqclient.RemoteKqueue {self.queue_id[:8]}… at {self.client.target}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed kqueue object")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(LookupError, DaemonUnavailable):  # gone already: done
                self.client.call("CloseQueue", kqd_pb2.CloseQueueRequest(queue_id=self.queue_id))

    def fileno(self) -> int:
        raise OSError("a remote kqueue has no local descriptor; use stream() or control()")

    def control(
        self, changelist: Iterable[kevent] | None, max_events: int, timeout: float | None = None
    ) -> list[kevent]:
        """kevent(2) in one round trip, with the core's argument rules and errors."""
        changes, max_events, wait = check_control_args(changelist, max_events, timeout)
        self._check_open()
        request = kqd_pb2.KeventRequest(
            queue_id=self.queue_id,
            changes=[to_wire(c) for c in changes],
            max_events=max_events,
            timeout=timeout_message(wait),
        )
        deadline = None if wait is None else wait + CALL_MARGIN_SECONDS
        response = self.client.call("Kevent", request, deadline)
        return [from_wire(ev) for ev in response.events]

    def register(self, changes: Iterable[kevent]) -> list[kevent]:
        """Apply *changes*; one receipt per change (flags KQ_EV_ERROR, data 0 or the errno)."""
        self._check_open()
        request = kqd_pb2.RegisterRequest(
            queue_id=self.queue_id, changes=[to_wire(c) for c in changes]
        )
        return [from_wire(r) for r in self.client.call("Register", request).receipts]

    def stream(self, *, after: int | None = None, max_batch: int = 0) -> Iterator[kevent]:
        """Server-streamed events in order, forever. A broken stream is resumed after the last
        sequence received (``last_sequence``): nothing is lost, nothing repeats."""
        self._check_open()
        if after is not None:
            self.last_sequence = after
        give_up = None
        while True:
            request = kqd_pb2.WaitRequest(
                queue_id=self.queue_id, after_sequence=self.last_sequence, max_batch=max_batch
            )
            try:
                for response in self.client.stub.Wait(request):
                    give_up = None
                    for item in response.events:
                        if item.sequence <= self.last_sequence:
                            continue  # already delivered before a reconnect
                        self.last_sequence = item.sequence
                        yield from_wire(item.event)
            except grpc.RpcError as error:
                exc = translate(error, self.client.target)
                if not isinstance(exc, DaemonUnavailable):
                    raise exc from None
                give_up = give_up or time.monotonic() + RECONNECT_SECONDS
                if time.monotonic() > give_up:
                    raise exc from None
            time.sleep(RECONNECT_PAUSE)

    def open(self, path: str) -> int:
        """Open *path* on the daemon's host (read-only); the descriptor ident for its knotes."""
        self._check_open()
        request = kqd_pb2.OpenRequest(queue_id=self.queue_id, path=path)
        return int(self.client.call("Open", request).fd)

    def open_peer_fd(self, pid: int, fd: int) -> int:
        """A duplicate of descriptor *fd* of process *pid* (pidfd_getfd on the daemon's host)."""
        self._check_open()
        request = kqd_pb2.OpenPeerFdRequest(queue_id=self.queue_id, pid=pid, fd=fd)
        return int(self.client.call("OpenPeerFd", request).fd)

    def open_connection(self, address: str) -> int:
        """Start a non-blocking connect from the daemon: WRITE fires when connected, with
        KQ_EV_EOF and the errno in fflags when refused."""
        self._check_open()
        request = kqd_pb2.OpenConnectionRequest(queue_id=self.queue_id, address=address)
        return int(self.client.call("OpenConnection", request).fd)

    def close_fd(self, fd: int) -> None:
        """Close a descriptor of the queue's table; its knotes go with it."""
        self._check_open()
        request = kqd_pb2.CloseDescriptorRequest(queue_id=self.queue_id, fd=fd)
        self.client.call("CloseDescriptor", request)
