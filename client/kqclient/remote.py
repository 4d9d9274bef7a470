"""The synchronous client: ``connect()``, and remote kqueues with the core's ``control()``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import grpc

from kqclient.errors import DaemonUnavailable, translate
from kqclient.protocol import QueueRequests, Resume, connection_fields, create_request
from kqclient.session import SessionEnded, SessionStream
from kqclient.target import TlsClientFiles, open_channel, resolve_target
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2_grpc
from kqd.wire import events_from_wire


class Client:
    """A connection to one kqd daemon; a context manager that closes the channel."""

    def __init__(self, target: str | None = None, tls: TlsClientFiles | None = None) -> None:
        self.target = resolve_target(target)
        self._channel = open_channel(self.target, tls or TlsClientFiles.from_env())
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

    def kqueue(self, queue_id: str | None = None, *, lease: float | None = None) -> RemoteKqueue:
        """A new remote queue, or (with *queue_id*) an existing one, e.g. after a restart.
        *lease*: seconds the new queue may outlive its connections (at most the daemon's)."""
        if queue_id is None:
            queue_id = self.call("CreateQueue", create_request(lease)).queue_id
        return RemoteKqueue(self, queue_id)


def connect(target: str | None = None, *, tls: TlsClientFiles | None = None) -> Client:
    """Connect to kqd at *target* (default: ``KQD_TARGET``, then the default socket); over TLS
    with *tls* (default: from ``KQD_TLS_*``, when set)."""
    return Client(target, tls)


def wait_for_daemon(
    target: str | None = None, timeout: float = 10.0, *, tls: TlsClientFiles | None = None
) -> None:
    """Return once kqd at *target* serves: its health service says SERVING for the kqueue
    service, so the calls that follow are answered. DaemonUnavailable after *timeout* seconds.

    A Unix socket is probed every PROBE_INTERVAL until something listens there; then (and for
    other targets, every RETRY_INTERVAL) one health Watch on a new channel reports the status
    as soon as the daemon sets it: this returns within milliseconds of the daemon serving.
    """
    # Imported here: nothing else in this module needs them (kqctl's start-up does not pay).
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from kqclient.target import PROBE_INTERVAL, RETRY_INTERVAL, listening, unix_socket_path
    from kqd.v1 import kqd_pb2

    target = resolve_target(target)
    tls = tls or TlsClientFiles.from_env()
    service = kqd_pb2.DESCRIPTOR.services_by_name["KQueueService"].full_name
    request = health_pb2.HealthCheckRequest(service=service)
    serving = health_pb2.HealthCheckResponse.SERVING
    # Tried again while time is left: nobody there yet, a connection that broke, a daemon that
    # is stopping; DEADLINE_EXCEEDED ends the loop (no time left).
    retried = (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    path = unix_socket_path(target)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if path is not None and not listening(path):
            time.sleep(min(PROBE_INTERVAL, left))
            continue
        # A new channel for each try: one whose connection failed would wait out gRPC's
        # reconnect backoff (100 ms or more) before trying again.
        with open_channel(target, tls) as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=left)
            try:
                if any(answer.status == serving for answer in call):
                    return
            except grpc.RpcError as error:
                if error.code() not in retried:  # type: ignore[attr-defined]
                    raise translate(error, target) from None
            finally:
                call.cancel()
        time.sleep(min(RETRY_INTERVAL, max(0.0, deadline - time.monotonic())))
    raise DaemonUnavailable(
        f"kqd at {target} did not serve within {timeout}s; is `kqd serve` running there?"
    )


class RemoteKqueue(QueueRequests):
    """A kqueue hosted by the daemon: ``control()`` exactly as the core's, plus ``stream()``.

    Idents of READ/WRITE/VNODE knotes are descriptors of the queue's own table, opened with
    ``open()``, ``open_peer_fd()`` or ``open_connection()``.
    """

    def __init__(self, client: Client, queue_id: str) -> None:
        super().__init__(queue_id)
        self.client = client
        self._session: SessionStream | None = None  # the running stream()'s, if any

    def __enter__(self) -> RemoteKqueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kqclient.RemoteKqueue {self.queue_id[:8]}… at {self.client.target}>"

    def close(self) -> None:
        request = self._close_call()
        if request is not None:
            with contextlib.suppress(LookupError, DaemonUnavailable):  # gone already: done
                self.client.call("CloseQueue", request)

    def control(
        self, changelist: Iterable[kevent] | None, max_events: int, timeout: float | None = None
    ) -> list[kevent]:
        """kevent(2) in one round trip, with the core's argument rules and errors."""
        request, deadline = self._kevent_call(changelist, max_events, timeout)
        return events_from_wire(self.client.call("Kevent", request, deadline).events)

    def register(self, changes: Iterable[kevent]) -> list[kevent]:
        """Apply *changes*; one receipt per change (flags KQ_EV_ERROR, data 0 or the errno).
        While a ``stream()`` of this object runs, through its Session (no round trip of its
        own); else a Register call. Any thread may call it."""
        session = self._session
        if session is not None:
            self._check_open()
            return session.register(list(changes))
        response = self.client.call("Register", self._register_call(changes))
        return events_from_wire(response.receipts)

    def stream(self, *, after: int | None = None, max_batch: int = 0) -> Iterator[kevent]:
        """Server-streamed events in order, forever. A broken stream is resumed after the last
        event yielded (``last_sequence``, updated as each event is yielded): nothing is lost,
        nothing repeats. Leaving it (``break``, ``close()``, an exception) ends its call."""
        with contextlib.closing(self._sequenced(after, max_batch)) as batches:
            for first, batch in batches:
                for offset, ev in enumerate(batch):
                    self.last_sequence = first + offset
                    yield ev

    def stream_batches(
        self, *, after: int | None = None, max_batch: int = 0
    ) -> Iterator[list[kevent]]:
        """``stream()`` a message at a time: cheaper per event at high rates.
        ``last_sequence`` is the last event of the batch yielded."""
        with contextlib.closing(self._sequenced(after, max_batch)) as batches:
            for first, batch in batches:
                self.last_sequence = first + len(batch) - 1
                yield batch

    def _sequenced(
        self, after: int | None, max_batch: int
    ) -> Generator[tuple[int, list[kevent]], None, None]:
        """(first sequence, events) per message, from a Session; closing it ends the call."""
        resume = Resume(self, after, max_batch)
        while True:
            session = SessionStream(self.client.stub, resume.request(), self.client.target)
            self._session = session
            try:
                while True:
                    first, batch = resume.accept(session.next_events())
                    if batch:
                        yield first, batch
            except SessionEnded:
                continue  # the daemon is stopping: resume at once (it retries while it is down)
            except DaemonUnavailable as exc:
                time.sleep(resume.retry_after(exc))
            finally:
                if self._session is session:
                    self._session = None
                session.close()

    def open(self, path: str) -> int:
        """Open *path* on the daemon's host (read-only); the descriptor ident for its knotes."""
        return int(self.client.call(*self._descriptor_call("Open", path=path)).fd)

    def open_peer_fd(self, pid: int, fd: int) -> int:
        """A duplicate of descriptor *fd* of process *pid* (pidfd_getfd on the daemon's host)."""
        return int(self.client.call(*self._descriptor_call("OpenPeerFd", pid=pid, fd=fd)).fd)

    def open_connection(self, address: str, *, retry_for: float | None = None) -> int:
        """Start a non-blocking connect from the daemon: WRITE fires when connected, with
        KQ_EV_EOF and the errno in fflags when refused. *retry_for* (host:port): the daemon
        tries again while refused, for up to that many seconds, and answers once connected
        (wait-for-it in one call)."""
        call = self._descriptor_call("OpenConnection", **connection_fields(address, retry_for))
        return int(self.client.call(*call).fd)

    def close_fd(self, fd: int) -> None:
        """Close a descriptor of the queue's table; its knotes go with it."""
        self.client.call(*self._descriptor_call("CloseDescriptor", fd=fd))
