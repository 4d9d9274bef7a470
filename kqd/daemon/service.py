"""KQueueService: translates gRPC messages to core calls and back; owns no kqueue logic."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration

from kqd.core import KQ_EV_DELETE, KQ_EV_ERROR, kevent
from kqd.daemon.remote_queue import RemoteQueue, ResumeTooOld
from kqd.v1 import kqd_pb2, kqd_pb2_grpc

log = logging.getLogger("kqd.daemon")

MAX_UDATA = 64 * 1024
MAX_CHANGES = 10_000
MAX_EVENTS = 10_000
DEFAULT_BATCH = 512
HEARTBEAT_SECONDS = 5.0


def to_core(message: kqd_pb2.Kevent, extra_flags: int = 0) -> kevent:
    return kevent(message.ident, message.filter, (message.flags | extra_flags) & 0xFFFF,
                  message.fflags, message.data, message.udata)


def to_wire(ev: kevent) -> kqd_pb2.Kevent:
    return kqd_pb2.Kevent(ident=ev.ident, filter=ev.filter, flags=ev.flags, fflags=ev.fflags,
                          data=ev.data, udata=ev.udata)


class KQueueService(kqd_pb2_grpc.KQueueServiceServicer):
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.queues: dict[str, RemoteQueue] = {}

    async def _queue(self, queue_id: str, context: grpc.aio.ServicerContext) -> RemoteQueue:
        queue = self.queues.get(queue_id)
        if queue is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no queue {queue_id!r}: it was closed, its lease expired, or the daemon "
                "restarted; create a new one with CreateQueue",
            )
        queue.touch()
        return queue

    async def _changes(self, changes, context, extra_flags: int = 0) -> list[kevent]:
        if len(changes) > MAX_CHANGES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"{len(changes)} changes in one call; the limit is {MAX_CHANGES}: "
                                "split the changelist")
        for change in changes:
            if len(change.udata) > MAX_UDATA:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"udata of {len(change.udata)} bytes for ident {change.ident}; "
                                    f"the limit is {MAX_UDATA} bytes")
            if not -(2**15) <= change.filter < 2**15 or change.flags >= 2**16:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"change for ident {change.ident}: filter must fit 16 bits "
                                    "signed and flags 16 bits unsigned")
        return [to_core(change, extra_flags) for change in changes]

    async def CreateQueue(self, request, context):  # noqa: N802 - gRPC method names
        queue = RemoteQueue(self.lease)
        self.queues[queue.queue_id] = queue
        log.info("queue %s… created", queue.queue_id[:8])
        return kqd_pb2.CreateQueueResponse(queue_id=queue.queue_id,
                                           lease=Duration(seconds=int(self.lease)))

    async def CloseQueue(self, request, context):  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        self.queues.pop(queue.queue_id, None)
        queue.close()
        return kqd_pb2.CloseQueueResponse()

    async def _receipts(self, request, context, extra_flags: int) -> list[kqd_pb2.Kevent]:
        """Apply each change alone and answer one receipt per change (data 0 or the errno)."""
        queue = await self._queue(request.queue_id, context)
        receipts = []
        for change in await self._changes(request.changes, context, extra_flags):
            try:
                queue.kq.control([change], 0, 0)
                error = 0
            except OSError as exc:
                error = exc.errno or errno.EINVAL
            receipts.append(kqd_pb2.Kevent(ident=change.ident, filter=change.filter,
                                           flags=KQ_EV_ERROR, fflags=change.fflags, data=error,
                                           udata=change.udata))
        return receipts

    async def Register(self, request, context):  # noqa: N802
        return kqd_pb2.RegisterResponse(receipts=await self._receipts(request, context, 0))

    async def Unregister(self, request, context):  # noqa: N802
        receipts = await self._receipts(request, context, KQ_EV_DELETE)
        return kqd_pb2.UnregisterResponse(receipts=receipts)

    async def Kevent(self, request, context):  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        changes = await self._changes(request.changes, context)
        if request.max_events > MAX_EVENTS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"max_events {request.max_events} is over the limit {MAX_EVENTS}")
        timeout = request.timeout.ToTimedelta().total_seconds() if request.HasField("timeout") else None
        if timeout is not None and timeout < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "timeout must not be negative")
        try:
            events = await queue.kevent(changes, request.max_events, timeout)
        except OSError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"[errno {exc.errno}] {exc.strerror or exc}")
        return kqd_pb2.KeventResponse(events=[to_wire(ev) for ev in events])

    async def Wait(self, request, context) -> AsyncIterator[kqd_pb2.WaitResponse]:  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        batch = min(request.max_batch or DEFAULT_BATCH, MAX_EVENTS)
        after = request.after_sequence
        queue.streams += 1
        try:
            while queue.queue_id in self.queues:
                try:
                    items = await queue.next_batch(after, batch, HEARTBEAT_SECONDS)
                except ResumeTooOld as exc:
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"cannot resume after sequence {after}: the oldest event still kept is "
                        f"{exc.oldest}; events in between are gone, so re-read the state you "
                        "watch and resume after the last sequence instead",
                    )
                if items:
                    after = items[-1][0]
                yield kqd_pb2.WaitResponse(
                    events=[kqd_pb2.SequencedKevent(sequence=s, event=to_wire(ev)) for s, ev in items],
                    last_sequence=queue.last_sequence,
                )
        finally:
            queue.streams -= 1
            queue.touch()

    async def _open(self, request, context, opener) -> int:
        queue = await self._queue(request.queue_id, context)
        try:
            return opener(queue)
        except FileNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{exc.filename}: no such file")
        except PermissionError as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except (OSError, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Open(self, request, context):  # noqa: N802
        fd = await self._open(request, context, lambda q: q.open_path(request.path))
        return kqd_pb2.OpenResponse(fd=fd)

    async def OpenPeerFd(self, request, context):  # noqa: N802
        fd = await self._open(request, context, lambda q: q.open_peer_fd(request.pid, request.fd))
        return kqd_pb2.OpenPeerFdResponse(fd=fd)

    async def OpenConnection(self, request, context):  # noqa: N802
        fd = await self._open(request, context, lambda q: q.open_connection(request.address))
        return kqd_pb2.OpenConnectionResponse(fd=fd)

    async def CloseDescriptor(self, request, context):  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        try:
            queue.close_descriptor(request.fd)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"descriptor {request.fd} is not open in this queue "
                                f"[errno {errno.EBADF}]")
        return kqd_pb2.CloseDescriptorResponse()

    async def expire_leases(self) -> None:
        """Close queues nobody has used for their lease (their descriptors go with them)."""
        while True:
            await asyncio.sleep(min(self.lease, 5.0))
            now = time.monotonic()
            for queue in [q for q in self.queues.values() if q.expired(now)]:
                log.info("queue %s… lease expired", queue.queue_id[:8])
                self.queues.pop(queue.queue_id, None)
                queue.close()

    def close_all(self) -> None:
        for queue in list(self.queues.values()):
            with contextlib.suppress(OSError):
                queue.close()
        self.queues.clear()


