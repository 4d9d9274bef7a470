"""The asyncio client: the same API as ``kqclient``, with ``await`` and ``async for``.

```python
from kqclient import aio
async with aio.connect() as client:
    kq = await client.kqueue()
    await kq.control([...], 0)
    async for ev in kq.stream():
        ...
```
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from typing import Any

import grpc

from kqclient.errors import DaemonUnavailable, KqdError, translate
from kqclient.protocol import QueueRequests, Resume, connection_fields, create_request
from kqclient.session import SessionEnded, changes_request, receipts_of, session_error
from kqclient.target import TlsClientFiles, open_channel, resolve_target
from kqd.core.kevent import kevent
from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from kqd.wire import events_from_wire


class Client:
    """An asyncio connection to one kqd daemon; ``async with`` closes it."""

    def __init__(self, target: str | None = None, tls: TlsClientFiles | None = None) -> None:
        self.target = resolve_target(target)
        tls = tls or TlsClientFiles.from_env()
        self._channel = open_channel(self.target, tls, aio=True)
        self.stub = kqd_pb2_grpc.KQueueServiceStub(self._channel)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await getattr(self.stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise translate(error, self.target) from None

    async def kqueue(
        self, queue_id: str | None = None, *, lease: float | None = None
    ) -> RemoteKqueue:
        if queue_id is None:
            response = await self.call("CreateQueue", create_request(lease))
            queue_id = response.queue_id
        return RemoteKqueue(self, queue_id)


def connect(target: str | None = None, *, tls: TlsClientFiles | None = None) -> Client:
    """Connect to kqd at *target* (default: ``KQD_TARGET``, then the default socket); over TLS
    with *tls* (default: from ``KQD_TLS_*``, when set)."""
    return Client(target, tls)


class SessionStream:
    """One Session call of the asyncio client (see kqclient.session for the protocol): a
    reader task files each changelist's reply for its waiter and event messages in order."""

    def __init__(self, stub: Any, start: kqd_pb2.WaitRequest, target: str) -> None:
        self._target = target
        self._call = stub.Session()
        self._writing = asyncio.Lock()  # gRPC takes one write at a time
        self._replies: dict[int, asyncio.Future[kqd_pb2.SessionReceipts]] = {}
        self._events: asyncio.Queue[kqd_pb2.WaitResponse | Exception] = asyncio.Queue()
        self._tags = itertools.count(1)
        self._reader = asyncio.create_task(self._read(start))

    async def register(self, changes: list[kevent]) -> list[kevent]:
        """As the synchronous SessionStream.register()."""
        tag = next(self._tags)
        reply = self._replies[tag] = asyncio.get_running_loop().create_future()
        async with self._writing:
            await self._call.write(changes_request(tag, changes))
        return receipts_of(await reply, self._target)

    async def next_events(self) -> kqd_pb2.WaitResponse:
        """The next events message; raises the stream's error, or SessionEnded."""
        item = await self._events.get()
        if isinstance(item, Exception):
            self._events.put_nowait(item)  # for whoever asks next
            raise item
        return item

    def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()

    async def _read(self, start: kqd_pb2.WaitRequest) -> None:
        failure: Exception
        try:
            async with self._writing:
                await self._call.write(kqd_pb2.SessionRequest(start=start))
            while (response := await self._call.read()) is not grpc.aio.EOF:
                if response.HasField("receipts"):
                    reply = self._replies.pop(response.receipts.tag, None)
                    if reply is not None and not reply.done():
                        reply.set_result(response.receipts)
                else:
                    self._events.put_nowait(response.events)
            failure = SessionEnded()
        except grpc.RpcError as error:
            failure = session_error(error, self._target)
        except asyncio.CancelledError:
            failure = KqdError("the stream was closed on this side (the stream, or its client)")
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(failure)
        self._events.put_nowait(failure)


class RemoteKqueue(QueueRequests):
    """The asyncio twin of ``kqclient.RemoteKqueue``."""

    def __init__(self, client: Client, queue_id: str) -> None:
        super().__init__(queue_id)
        self.client = client
        self._session: SessionStream | None = None  # the running stream()'s, if any

    async def __aenter__(self) -> RemoteKqueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        request = self._close_call()
        if request is not None:
            with contextlib.suppress(LookupError, DaemonUnavailable):
                await self.client.call("CloseQueue", request)

    async def control(
        self, changelist: Iterable[kevent] | None, max_events: int, timeout: float | None = None
    ) -> list[kevent]:
        request, deadline = self._kevent_call(changelist, max_events, timeout)
        response = await self.client.call("Kevent", request, deadline)
        return events_from_wire(response.events)

    async def register(self, changes: Iterable[kevent]) -> list[kevent]:
        """As ``kqclient.RemoteKqueue.register()``: through the running stream's Session."""
        if self._session is not None:
            self._check_open()
            return await self._session.register(list(changes))
        response = await self.client.call("Register", self._register_call(changes))
        return events_from_wire(response.receipts)

    async def stream(
        self, *, after: int | None = None, max_batch: int = 0
    ) -> AsyncIterator[kevent]:
        """Server-streamed events in order, forever, resumed after ``last_sequence`` when the
        stream breaks. Leaving it (``break``, ``aclose()``, an exception) cancels its call."""
        async with contextlib.aclosing(self._sequenced(after, max_batch)) as batches:
            async for first, batch in batches:
                for offset, ev in enumerate(batch):
                    self.last_sequence = first + offset
                    yield ev

    async def stream_batches(
        self, *, after: int | None = None, max_batch: int = 0
    ) -> AsyncIterator[list[kevent]]:
        """``stream()`` a message at a time: cheaper per event at high rates."""
        async with contextlib.aclosing(self._sequenced(after, max_batch)) as batches:
            async for first, batch in batches:
                self.last_sequence = first + len(batch) - 1
                yield batch

    async def _sequenced(
        self, after: int | None, max_batch: int
    ) -> AsyncGenerator[tuple[int, list[kevent]], None]:
        """(first sequence, events) per message, from a Session. Closing this generator
        cancels the call at once: nothing else would (an ``async for`` does not close what it
        iterates, and the call lives on in gRPC's own references until a garbage collection),
        and the daemon would go on sending to it."""
        resume = Resume(self, after, max_batch)
        while True:
            session = SessionStream(self.client.stub, resume.request(), self.client.target)
            self._session = session
            try:
                while True:
                    first, batch = resume.accept(await session.next_events())
                    if batch:
                        yield first, batch
            except SessionEnded:
                continue  # the daemon is stopping: resume at once (it retries while it is down)
            except DaemonUnavailable as exc:
                await asyncio.sleep(resume.retry_after(exc))
            finally:
                if self._session is session:
                    self._session = None
                session.close()

    async def open(self, path: str) -> int:
        return int((await self.client.call(*self._descriptor_call("Open", path=path))).fd)

    async def open_peer_fd(self, pid: int, fd: int) -> int:
        call = self._descriptor_call("OpenPeerFd", pid=pid, fd=fd)
        return int((await self.client.call(*call)).fd)

    async def open_connection(self, address: str, *, retry_for: float | None = None) -> int:
        call = self._descriptor_call("OpenConnection", **connection_fields(address, retry_for))
        return int((await self.client.call(*call)).fd)

    async def close_fd(self, fd: int) -> None:
        await self.client.call(*self._descriptor_call("CloseDescriptor", fd=fd))
