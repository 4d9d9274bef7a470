"""KQueueService: translates gRPC messages to core calls and back; owns no kqueue logic.

Like etcd's watch server, receiving (the unary calls), the watch engine (RemoteQueue and the
core) and sending (the Wait loop) are separate: a Wait stream only reads from its queue, and a
reader that stops reading holds up nothing but its own stream, which is closed with a reason once
it has been stuck for STUCK_SECONDS.

Every handler runs under ``rpc_errors``: whatever a client sends, the call ends with a status
that names the problem (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...), never UNKNOWN and
never a traceback. Every call on a queue holds it (``_using``), so its lease only counts idle
time; a queue that ends under a call ends the call at once: NOT_FOUND when it was closed,
UNAVAILABLE when the daemon is shutting down (a Wait stream then ends with status OK).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import grpc
from grpc._cython.cygrpc import ExecuteBatchError  # a write on a call already over

from kqd.core import KQ_EV_DELETE, KQ_EV_ERROR, kevent
from kqd.daemon.admission import KnoteAdmission
from kqd.daemon.authorizer import Authorizer
from kqd.daemon.connections import MAX_RETRY_SECONDS, connection_target
from kqd.daemon.delivery_log import ResumeTooOldError
from kqd.daemon.identity import Principal, current_principal
from kqd.daemon.metrics_delivery import delivery
from kqd.daemon.quotas import Accounts, QuotaExceeded
from kqd.daemon.remote_queue import QueueClosedError, RemoteQueue, Turn, queue_key
from kqd.daemon.restore import object_identity
from kqd.daemon.store import StateStore
from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from kqd.wire import ERRNO_KEY, duration, from_wire, seconds_of, to_wire, wait_response

log = logging.getLogger("kqd.daemon")

MAX_UDATA = 64 * 1024
MAX_CHANGES = 10_000
MAX_EVENTS = 10_000
MAX_PID = MAX_FD = 2**31 - 1  # pid_t and int: beyond, no process or descriptor can exist
DEFAULT_BATCH = 512
HEARTBEAT_SECONDS = 5.0
STUCK_SECONDS = 60.0
HOUSEKEEPING_SECONDS = 1.0
STORE_DROP_ROWS = 500  # a forgotten queue's knote rows deleted per loop turn (~0.5 ms)
SHUTTING_DOWN = "kqd is shutting down; reconnect once it is back"

_OS_ERROR_STATUS = {
    errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    errno.EMFILE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.ENFILE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.ENOMEM: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errno.EBADF: grpc.StatusCode.NOT_FOUND,
    errno.ESRCH: grpc.StatusCode.NOT_FOUND,
    errno.ETIMEDOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    errno.ECONNREFUSED: grpc.StatusCode.FAILED_PRECONDITION,
    errno.EAGAIN: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_OS_ERROR_ADVICE = {
    errno.EMFILE: "; the daemon is out of descriptors: close queues or descriptors you no "
    "longer need, or raise its RLIMIT_NOFILE",
    errno.ENFILE: "; the host is out of descriptors",
}

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with *code* and *message* (the status a client sees)."""
    await context.abort(code, message)
    raise AssertionError("unreachable: ServicerContext.abort raises")


class ChangelistTooLongError(Exception):
    """Over MAX_CHANGES changes in one changelist: refused whole (RESOURCE_EXHAUSTED)."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """How a call (or a Session changelist) ends for a given error: status, message, errno."""

    code: grpc.StatusCode
    message: str
    errno: int | None = None


def failure_of(exc: Exception, what: str) -> Failure | None:
    """The status *exc* calls for, naming *what* failed; None for a daemon bug."""
    if isinstance(exc, QuotaExceeded):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), exc.errno)
    if isinstance(exc, ChangelistTooLongError):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    if isinstance(exc, OSError):
        code = exc.errno or errno.EINVAL
        where = what if exc.filename is None else exc.filename
        advice = _OS_ERROR_ADVICE.get(code, "")
        return Failure(
            _OS_ERROR_STATUS.get(code, grpc.StatusCode.INVALID_ARGUMENT),
            f"{where}: {exc.strerror or exc} [errno {code}]{advice}",
            code,
        )
    if isinstance(exc, (ValueError, OverflowError, TypeError)):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, f"{what}: {exc}")
    return None


def rpc_errors(handler: Handler) -> Handler:
    """Give every failure of *handler* a precise status: no input may produce UNKNOWN."""
    name = handler.__name__

    @functools.wraps(handler)
    async def guarded(self: KQueueService, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await fail_call(context, exc, name)

    return guarded  # type: ignore[return-value]


async def fail_call(context: grpc.aio.ServicerContext, exc: Exception, name: str) -> NoReturn:
    """End the call with the status *exc* calls for (INTERNAL, logged, for a daemon bug)."""
    failure = failure_of(exc, name)
    if failure is None:  # a daemon bug: one line in the log, a clear status out
        log.error("%s failed: %s: %s", name, type(exc).__name__, exc)
        failure = Failure(grpc.StatusCode.INTERNAL, f"{name}: internal error: {exc}")
    if failure.errno is not None:
        context.set_trailing_metadata(((ERRNO_KEY, str(failure.errno)),))
    await abort(context, failure.code, failure.message)


async def alongside(main: Awaitable[None], side: Awaitable[None]) -> None:
    """Await *main* while *side* runs beside it. *side* ending normally (a client that
    half-closed its requests) leaves *main* running; *side* failing ends *main* and raises
    its error; *main* ending, or the call being cancelled, cancels *side*."""
    tasks = side_task, main_task = asyncio.ensure_future(side), asyncio.ensure_future(main)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if not main_task.done():
            main_task.cancel()
            await asyncio.wait({main_task})
            await side_task  # raises its error
        await main_task
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:  # what is not raised here is not an error: the call is over
            if not task.cancelled():
                task.exception()


class KQueueService(kqd_pb2_grpc.KQueueServiceServicer):
    def __init__(
        self,
        lease: float,
        authorizer: Authorizer,
        accounts: Accounts,
        store: StateStore | None = None,
    ) -> None:
        self.lease = lease
        self.authorizer = authorizer
        self.accounts = accounts
        self.store = store
        self.queues: dict[str, RemoteQueue] = {}  # by queue_key(queue id)
        self.stopping = False
        self._stopped = asyncio.Event()  # set with stopping: wakes what waits on no queue
        self._dropping: set[asyncio.Task[None]] = set()  # forgotten queues' rows going

    @staticmethod
    def _caller() -> Principal:
        return current_principal.get()

    @asynccontextmanager
    async def _using(
        self, queue_id: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[RemoteQueue]:
        """The caller's queue *queue_id*, held for the duration of a call (see the module
        docstring). Another principal's queue does not exist for the caller: the same NOT_FOUND
        as a wrong id."""
        queue = self.queues.get(queue_key(queue_id))
        if queue is not None and queue.owner != self._caller().name:
            queue = None
        if queue is None:
            if self.stopping:
                await abort(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                "no such queue: it was closed, its lease expired or the daemon restarted; "
                "create a new one with CreateQueue",
            )
        with queue.in_use():
            try:
                yield queue
            except QueueClosedError as exc:
                if self.stopping:
                    await abort(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
                await abort(context, grpc.StatusCode.NOT_FOUND, f"the queue was closed: {exc}")

    async def _changes(
        self, changes: Sequence[kqd_pb2.Kevent], extra_flags: int = 0
    ) -> list[kevent]:
        """*changes* as kevents, checked whole before any is applied (ChangelistTooLongError,
        QuotaExceeded, ValueError...: the changelist changes nothing)."""
        if len(changes) > MAX_CHANGES:
            raise ChangelistTooLongError(
                f"{len(changes)} changes in one call; the limit is {MAX_CHANGES}: split them"
            )
        caller = self._caller()
        rate = self.authorizer.rules(caller).quotas.changes_per_second
        self.accounts.usage(caller.name).take_changes(len(changes), rate)
        out = []
        trusted, turn = kevent._trusted, Turn()  # a long changelist is read over loop turns too
        for change in changes:
            udata, filter_, flags = change.udata, change.filter, change.flags | extra_flags
            if len(udata) > MAX_UDATA:
                raise ValueError(
                    f"udata of {len(udata)} bytes for ident {change.ident}; the limit is "
                    f"{MAX_UDATA} bytes"
                )
            if -0x8000 <= filter_ <= 0x7FFF and flags <= 0xFFFF:
                # The proto's uint64 ident, uint32 fflags and int64 data hold nothing a kevent
                # refuses: with filter and flags in range its checks (a third of the time a
                # changelist took to read) would all pass.
                out.append(trusted(change.ident, filter_, flags, change.fflags, change.data, udata))
            else:
                out.append(from_wire(change, extra_flags))  # raises, naming the field
            if turn.due():
                await turn.next()
        return out

    @rpc_errors
    async def CreateQueue(self, request, context):  # noqa: N802 - gRPC method names
        if self.stopping:
            await abort(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        lease = self.lease
        if request.HasField("lease"):
            lease = min(lease, seconds_of(request.lease, "lease"))
        caller = self._caller()
        rules = self.authorizer.rules(caller)
        usage = self.accounts.usage(caller.name)
        with usage.bill() as bill:
            bill.charge("queues", 1, rules.quotas.queues)
            bill.charge_daemon_fds(RemoteQueue.OWN_DESCRIPTORS)
            queue = RemoteQueue(lease, caller.name, usage, self.store)
        self.adopt_queue(queue, caller)
        if self.store is not None:
            record = queue.record()
            record.owner_peer = None if caller.peer is None else dataclasses.asdict(caller.peer)
            self.store.put_queue(record)
            self.store.commit()
        log.debug("%s created queue %s (lease %ss)", caller.name, queue.short, lease)
        return kqd_pb2.CreateQueueResponse(queue_id=queue.queue_id, lease=duration(lease))

    def adopt_queue(self, queue: RemoteQueue, owner: Principal) -> None:
        """Serve *queue* (new, or brought back from the store) for *owner*."""
        queue.policy = KnoteAdmission(owner.name, lambda: self.authorizer.rules(owner), queue.usage)
        self.queues[queue.key] = queue

    @rpc_errors
    async def CloseQueue(self, request, context):  # noqa: N802
        async with self._using(request.queue_id, context) as queue:
            self._end(queue, "CloseQueue was called", forget=True)
        return kqd_pb2.CloseQueueResponse()

    async def _receipts(self, request, context, extra_flags: int) -> list[kqd_pb2.Kevent]:
        async with self._using(request.queue_id, context) as queue:
            return await self._apply_each(queue, request.changes, extra_flags)

    async def _apply_each(
        self, queue: RemoteQueue, changes: Sequence[kqd_pb2.Kevent], extra_flags: int = 0
    ) -> list[kqd_pb2.Kevent]:
        """Apply each change alone; one receipt per change (data 0 or the errno), durable
        before they are returned."""
        receipts, turn = [], Turn()
        for change in await self._changes(changes, extra_flags):
            try:
                queue.control_now([change], 0)
                error = 0
            except OSError as exc:
                error = exc.errno or errno.EINVAL
            change.flags, change.data = KQ_EV_ERROR, error
            receipts.append(to_wire(change))
            if turn.due():
                await turn.next()  # bounded work per loop turn (see Turn)
        await queue.persist_in_turns()  # durable before the receipts leave
        return receipts

    @rpc_errors
    async def Register(self, request, context):  # noqa: N802
        return kqd_pb2.RegisterResponse(receipts=await self._receipts(request, context, 0))

    @rpc_errors
    async def Unregister(self, request, context):  # noqa: N802
        receipts = await self._receipts(request, context, KQ_EV_DELETE)
        return kqd_pb2.UnregisterResponse(receipts=receipts)

    @rpc_errors
    async def Kevent(self, request, context):  # noqa: N802
        if request.max_events > MAX_EVENTS:
            raise ValueError(f"max_events {request.max_events} is over the limit {MAX_EVENTS}")
        timeout = None
        if request.HasField("timeout"):
            timeout = seconds_of(request.timeout, "timeout")
        async with self._using(request.queue_id, context) as queue:
            changes = await self._changes(request.changes)
            events = await queue.control(changes, request.max_events, timeout)
            await queue.persist_in_turns()
        return kqd_pb2.KeventResponse(events=[to_wire(ev) for ev in events])

    @rpc_errors
    async def Wait(self, request, context):  # noqa: N802
        await self._stream(request, context, context.write)

    @rpc_errors
    async def Session(self, request_iterator, context):  # noqa: N802
        # etcd's Watch shape: this handler sends (the Wait loop), a task receives changelists
        # (receive, run alongside). One lock orders the writes: a changelist holds it from before it
        # is applied until its receipts are written, so no event its changes caused (collected
        # after they were applied) can go out first.
        requests = aiter(request_iterator)
        # Waiting for the start message is waiting on no queue: shutdown must end it too (else
        # gRPC cancels it at the end of the grace period, and logs that as an error).
        reading = asyncio.ensure_future(anext(requests, None))
        stopped = asyncio.ensure_future(self._stopped.wait())
        await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not reading.done():
            reading.cancel()
            await abort(context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        first = reading.result()
        if first is None or first.WhichOneof("request") != "start":
            raise ValueError("a Session's first message must be start (a WaitRequest)")
        writing = asyncio.Lock()

        async def send_events(response: kqd_pb2.WaitResponse) -> None:
            async with writing:
                await context.write(kqd_pb2.SessionResponse(events=response))

        async def receive(queue: RemoteQueue) -> None:
            try:
                async for request in requests:
                    if request.WhichOneof("request") != "changes":
                        raise ValueError("a Session takes start once, as its first message")
                    async with writing:
                        reply = await self._session_receipts(queue, request.changes)
                        await context.write(kqd_pb2.SessionResponse(receipts=reply))
            except QueueClosedError:
                return  # the sending half sees it too, and ends the call as Wait would
            except Exception as exc:
                # Ended from here, holding the write lock: gRPC refuses a status while a
                # write of the sending half is still in flight.
                async with writing:
                    await fail_call(context, exc, "Session")

        await self._stream(first.start, context, send_events, receive)

    async def _session_receipts(
        self, queue: RemoteQueue, request: kqd_pb2.SessionChanges
    ) -> kqd_pb2.SessionReceipts:
        """A changelist's reply: its receipts, or why it was refused as a whole (the status a
        Register call would have ended with; the session goes on)."""
        try:
            receipts = await self._apply_each(queue, request.changes)
        except Exception as exc:
            failure = failure_of(exc, "Session changes")
            if failure is None:  # the queue closed (QueueClosedError), or a daemon bug
                raise
            return kqd_pb2.SessionReceipts(
                tag=request.tag,
                code=failure.code.value[0],
                message=failure.message,
                errno=failure.errno or 0,
            )
        return kqd_pb2.SessionReceipts(tag=request.tag, receipts=receipts)

    async def _stream(
        self,
        request: kqd_pb2.WaitRequest,
        context: grpc.aio.ServicerContext,
        write: Callable[[kqd_pb2.WaitResponse], Awaitable[None]],
        receive: Callable[[RemoteQueue], Awaitable[None]] | None = None,
    ) -> None:
        """A Wait stream (and, with *receive*, a Session's receiving half alongside it)."""
        batch = min(request.max_batch or DEFAULT_BATCH, MAX_EVENTS)
        after = request.after_sequence
        caller = self._caller()
        streams = self.authorizer.rules(caller).quotas.streams
        async with self._using(request.queue_id, context) as queue:
            if after > queue.log.last_sequence:
                raise ValueError(
                    f"after_sequence {after} is beyond the last sequence assigned, "
                    f"{queue.log.last_sequence}: resume after a number this queue delivered"
                )
            try:
                with (
                    self.accounts.usage(caller.name).borrow("streams", 1, streams),
                    delivery.streaming(queue),
                ):
                    sending = self._send_events(queue, after, batch, request.packed, write, context)
                    if receive is None:
                        await sending
                    else:
                        await alongside(sending, receive(queue))
            except QueueClosedError:
                if not self.stopping:
                    raise
            except ResumeTooOldError as exc:
                await abort(
                    context,
                    grpc.StatusCode.OUT_OF_RANGE,
                    f"cannot resume after sequence {after}: the oldest event kept is "
                    f"{exc.oldest}; what came between is gone, so re-read the state you "
                    f"watch and resume after {exc.oldest - 1}",
                )

    async def _send_events(
        self,
        queue: RemoteQueue,
        after: int,
        batch: int,
        packed: bool,
        write: Callable[[kqd_pb2.WaitResponse], Awaitable[None]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """The sending half of a stream: until the queue ends (QueueClosedError)."""
        # The first response goes out at once, events or not: the client knows the stream is
        # established and where the queue stands (like etcd's "created" watch response).
        quiet_for = 0.0
        while True:
            items = await queue.next_batch(after, batch, quiet_for)
            quiet_for = HEARTBEAT_SECONDS
            response = wait_response(items, queue.log.last_sequence, packed)
            try:
                async with asyncio.timeout(STUCK_SECONDS):  # no task of its own (wait_for's)
                    await write(response)
            except ExecuteBatchError:
                # The call ended under the write: the client cancelled it (a consumer that
                # stopped reading), its deadline passed or its connection broke. Nobody is left
                # to answer, and gRPC sees the cancellation by itself: not a daemon error.
                log.debug("queue %s: stream gone at its client", queue.short)
                return
            except TimeoutError:
                delivery.stuck()
                await abort(
                    context,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the client read nothing for {STUCK_SECONDS:.0f}s; stream closed, "
                    f"resume after sequence {after}",
                )
            delivery.sent(queue, items)
            if items:
                after = items[-1][0]
                # Bounded work per turn: a queue with a storm of events yields the loop after
                # each batch, so every other client's calls get their turn in between.
                await asyncio.sleep(0)

    async def _adopt(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        opener: Callable[[Principal], Awaitable[int]],
        kind: str,
        spec: dict[str, Any],
    ) -> int:
        """Open a descriptor for the caller (charged to its "descriptors" quota) into its
        queue's table, written down as *kind* with *spec* (plus its object's identity); the
        client's number for it."""
        caller = self._caller()
        limit = self.authorizer.rules(caller).quotas.descriptors
        async with self._using(request.queue_id, context) as queue:
            with self.accounts.usage(caller.name).hold("descriptors", 1, limit):
                fd = await opener(caller)
                if queue.closed_because is not None:  # closed while the open was under way
                    os.close(fd)
                    queue.check_open()
                number = queue.adopt(fd, kind, {**spec, **object_identity(kind, spec, fd)})
                queue.persist()
                return number

    @rpc_errors
    async def Open(self, request, context):  # noqa: N802
        if not request.path.startswith("/"):
            raise ValueError(f"path {request.path!r} is not absolute; give the whole path")
        fd = await self._adopt(
            request,
            context,
            lambda caller: self.authorizer.open_path(caller, request.path),
            "path",
            {"path": request.path},
        )
        return kqd_pb2.OpenResponse(fd=fd)

    @rpc_errors
    async def OpenPeerFd(self, request, context):  # noqa: N802
        if not 0 < request.pid <= MAX_PID:
            raise ValueError(f"pid {request.pid} is out of range: 1..{MAX_PID}")
        if request.fd > MAX_FD:
            raise ValueError(f"fd {request.fd} is out of range: 0..{MAX_FD}")

        async def getfd(caller: Principal) -> int:
            return self.authorizer.open_peer_fd(caller, request.pid, request.fd)

        fd = await self._adopt(
            request, context, getfd, "peer", {"pid": request.pid, "fd": request.fd}
        )
        return kqd_pb2.OpenPeerFdResponse(fd=fd)

    @rpc_errors
    async def OpenConnection(self, request, context):  # noqa: N802
        family, target = await connection_target(request.address)  # checked, resolved
        retry_for = 0.0
        if request.HasField("retry_for"):
            retry_for = min(seconds_of(request.retry_for, "retry_for"), MAX_RETRY_SECONDS)

        async def connect(caller: Principal) -> int:
            return await self.authorizer.open_connection(
                caller, request.address, family, target, retry_for
            )

        fd = await self._adopt(
            request, context, connect, "connection", {"address": request.address}
        )
        return kqd_pb2.OpenConnectionResponse(fd=fd)

    @rpc_errors
    async def CloseDescriptor(self, request, context):  # noqa: N802
        async with self._using(request.queue_id, context) as queue:
            if request.fd not in queue.descriptors:  # NOT_FOUND, errno EBADF: the proto's answer
                context.set_trailing_metadata(((ERRNO_KEY, str(errno.EBADF)),))
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"descriptor {request.fd} is not open in this queue [errno {errno.EBADF}]; "
                    "use a descriptor Open, OpenPeerFd or OpenConnection returned",
                )
            queue.close_descriptor(request.fd)
            queue.persist()
        return kqd_pb2.CloseDescriptorResponse()

    def _end(self, queue: RemoteQueue, because: str, *, forget: bool) -> None:
        """Stop serving *queue*; *forget*: it is over for good (not only for this daemon)."""
        self.queues.pop(queue.key, None)
        queue.close(because)
        if forget and self.store is not None:
            self.store.drop_queue(queue.key)
            self.store.commit()
            task = asyncio.get_running_loop().create_task(self._drop_stored_knotes(queue.key))
            self._dropping.add(task)
            task.add_done_callback(self._dropping.discard)

    async def _drop_stored_knotes(self, key: str) -> None:
        """A forgotten queue's knote rows, deleted a bounded number per loop turn (a queue of
        300,000 knotes took ~300 ms in one DELETE); the store drops what is left at its next
        start if the daemon stops first."""
        while self.store is not None and self.store.drop_knotes_of(key, STORE_DROP_ROWS):
            self.store.commit()
            await asyncio.sleep(0)

    async def housekeeping(self) -> None:
        """Once a second: let go of peer descriptors their owners closed (kcmp), and close
        queues nobody has used for their lease (their descriptors go with them)."""
        while True:
            await asyncio.sleep(min(self.lease, HOUSEKEEPING_SECONDS))
            for queue in self.queues.values():
                for fd in queue.release_abandoned_peer_fds():
                    log.info("queue %s: descriptor %d closed by its owner", queue.short, fd)
                queue.refresh()
            now = time.monotonic()
            for queue in [q for q in self.queues.values() if q.expired(now)]:
                log.debug("queue %s closed: idle for its lease", queue.short)
                self._end(queue, f"nobody used it for its lease of {queue.lease:g}s", forget=True)

    def shut_down(self) -> None:
        """End every queue now: waiting calls fail with UNAVAILABLE, Wait streams end with
        status OK, and new calls are refused."""
        self.stopping = True
        self._stopped.set()
        for task in self._dropping:
            task.cancel()
        for queue in list(self.queues.values()):
            queue.refresh()
            self._end(queue, SHUTTING_DOWN, forget=False)
