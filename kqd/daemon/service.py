"""KQueueService: translates gRPC messages to core calls and back; owns no kqueue logic.

Like etcd's watch server, receiving (the unary calls), the watch engine (RemoteQueue and the
core) and sending (the Wait loop) are separate: a Wait stream only reads from its queue, and a
reader that stops reading holds up nothing but its own stream, which is closed with a reason once
it has been stuck for STUCK_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from google.protobuf.duration_pb2 import Duration

from kqd.core import KQ_EV_DELETE, KQ_EV_ERROR, kevent
from kqd.daemon.delivery_log import ResumeTooOldError
from kqd.daemon.remote_queue import RemoteQueue
from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from kqd.wire import ERRNO_KEY, fill_wire, from_wire, to_wire

log = logging.getLogger("kqd.daemon")

MAX_UDATA = 64 * 1024
MAX_CHANGES = 10_000
MAX_EVENTS = 10_000
DEFAULT_BATCH = 512
HEARTBEAT_SECONDS = 5.0
STUCK_SECONDS = 60.0
HOUSEKEEPING_SECONDS = 1.0

_OS_ERROR_STATUS = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.EMFILE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.ENFILE: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with *code* and *message* (the status a client sees)."""
    await context.abort(code, message)
    raise AssertionError("unreachable: ServicerContext.abort raises")


async def abort_os_error(context: grpc.aio.ServicerContext, exc: OSError, what: str) -> NoReturn:
    """Fail the call with the status matching *exc*, the errno in trailing metadata."""
    code = exc.errno or errno.EINVAL
    context.set_trailing_metadata(((ERRNO_KEY, str(code)),))
    status = _OS_ERROR_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT)
    await abort(context, status, f"{what}: {exc.strerror or exc} [errno {code}]")


class KQueueService(kqd_pb2_grpc.KQueueServiceServicer):
    def __init__(self, lease: float) -> None:
        self.lease = lease
        self.queues: dict[str, RemoteQueue] = {}
        self.stopping = False

    async def _queue(self, queue_id: str, context: grpc.aio.ServicerContext) -> RemoteQueue:
        queue = self.queues.get(queue_id)
        if queue is None:
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no queue {queue_id!r}: it was closed, its lease expired or the daemon "
                "restarted; create a new one with CreateQueue",
            )
        queue.touch()
        return queue

    async def _changes(
        self,
        changes: Sequence[kqd_pb2.Kevent],
        context: grpc.aio.ServicerContext,
        extra_flags: int = 0,
    ) -> list[kevent]:
        if len(changes) > MAX_CHANGES:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(changes)} changes in one call; the limit is {MAX_CHANGES}: split them",
            )
        out = []
        for change in changes:
            if len(change.udata) > MAX_UDATA:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"udata of {len(change.udata)} bytes for ident {change.ident}; the limit is "
                    f"{MAX_UDATA} bytes",
                )
            try:
                out.append(from_wire(change, extra_flags))
            except (OverflowError, TypeError) as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return out

    async def CreateQueue(self, request, context):  # noqa: N802 - gRPC method names
        lease = self.lease
        if request.HasField("lease"):
            lease = min(lease, max(0.0, request.lease.ToTimedelta().total_seconds()))
        queue = RemoteQueue(lease)
        self.queues[queue.queue_id] = queue
        log.info("queue %s… created (lease %ss)", queue.queue_id[:8], lease)
        granted = Duration()
        granted.FromNanoseconds(int(lease * 1e9))
        return kqd_pb2.CreateQueueResponse(queue_id=queue.queue_id, lease=granted)

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
                queue.control_now([change], 0)
                error = 0
            except OSError as exc:
                error = exc.errno or errno.EINVAL
            change.flags, change.data = KQ_EV_ERROR, error
            receipts.append(to_wire(change))
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
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"max_events {request.max_events} is over the limit {MAX_EVENTS}",
            )
        timeout = None
        if request.HasField("timeout"):
            timeout = request.timeout.ToTimedelta().total_seconds()
            if timeout < 0:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "timeout must be >= 0")
        try:
            events = await queue.control(changes, request.max_events, timeout)
        except OSError as exc:
            await abort_os_error(context, exc, "kevent")
        return kqd_pb2.KeventResponse(events=[to_wire(ev) for ev in events])

    async def Wait(self, request, context):  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        batch = min(request.max_batch or DEFAULT_BATCH, MAX_EVENTS)
        after = request.after_sequence
        queue.streams += 1
        # The first response goes out at once, events or not: the client knows the stream is
        # established and where the queue stands (like etcd's "created" watch response).
        quiet_for = 0.0
        try:
            while queue.queue_id in self.queues and not self.stopping:
                try:
                    items = await queue.next_batch(after, batch, quiet_for)
                    quiet_for = HEARTBEAT_SECONDS
                except ResumeTooOldError as exc:
                    await abort(
                        context,
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"cannot resume after sequence {after}: the oldest event kept is "
                        f"{exc.oldest}; what came between is gone, so re-read the state you "
                        f"watch and resume after {exc.oldest - 1}",
                    )
                if self.stopping:
                    break
                response = kqd_pb2.WaitResponse(last_sequence=queue.log.last_sequence)
                for sequence, ev in items:
                    item = response.events.add()
                    item.sequence = sequence
                    fill_wire(item.event, ev)
                try:
                    await asyncio.wait_for(context.write(response), STUCK_SECONDS)
                except TimeoutError:
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the client read nothing for {STUCK_SECONDS:.0f}s; stream closed, "
                        f"resume after sequence {after}",
                    )
                if items:
                    after = items[-1][0]
            if not self.stopping:
                await abort(context, grpc.StatusCode.NOT_FOUND, "the queue was closed")
        finally:
            queue.streams -= 1
            queue.touch()

    async def _open(self, request, context, what: str, opener: Callable[[RemoteQueue], int]) -> Any:
        queue = await self._queue(request.queue_id, context)
        try:
            return opener(queue)
        except OSError as exc:
            await abort_os_error(context, exc, what)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Open(self, request, context):  # noqa: N802
        fd = await self._open(request, context, request.path, lambda q: q.open_path(request.path))
        return kqd_pb2.OpenResponse(fd=fd)

    async def OpenPeerFd(self, request, context):  # noqa: N802
        fd = await self._open(
            request,
            context,
            f"descriptor {request.fd} of process {request.pid}",
            lambda q: q.open_peer_fd(request.pid, request.fd),
        )
        return kqd_pb2.OpenPeerFdResponse(fd=fd)

    async def OpenConnection(self, request, context):  # noqa: N802
        fd = await self._open(
            request, context, request.address, lambda q: q.open_connection(request.address)
        )
        return kqd_pb2.OpenConnectionResponse(fd=fd)

    async def CloseDescriptor(self, request, context):  # noqa: N802
        queue = await self._queue(request.queue_id, context)
        if request.fd not in queue.descriptors:
            context.set_trailing_metadata(((ERRNO_KEY, str(errno.EBADF)),))
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"descriptor {request.fd} is not open in this queue",
            )
        queue.close_descriptor(request.fd)
        return kqd_pb2.CloseDescriptorResponse()

    async def housekeeping(self) -> None:
        """Once a second: let go of peer descriptors their owners closed (kcmp), and close
        queues nobody has used for their lease (their descriptors go with them)."""
        while True:
            await asyncio.sleep(min(self.lease, HOUSEKEEPING_SECONDS))
            for queue in self.queues.values():
                for fd in queue.release_abandoned_peer_fds():
                    log.info("queue %s…: descriptor %d closed by its owner", queue.queue_id[:8], fd)
            now = time.monotonic()
            for queue in [q for q in self.queues.values() if q.expired(now)]:
                log.info("queue %s… lease expired", queue.queue_id[:8])
                self.queues.pop(queue.queue_id, None)
                queue.close()

    def stop_streams(self) -> None:
        """Let every Wait stream end cleanly (status OK) at once."""
        self.stopping = True
        for queue in self.queues.values():
            queue.stop_waits()

    def close_all(self) -> None:
        for queue in list(self.queues.values()):
            with contextlib.suppress(OSError):
                queue.close()
        self.queues.clear()
