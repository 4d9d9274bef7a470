"""A remote queue: one core kqueue, its own descriptor table, and a replayable delivery log.

Events a Wait stream takes from the core are numbered and kept (DeliveryLog), so a stream that
broke resumes after the last number it received and gets exactly what followed, including what
was sent but never arrived. Every Wait stream reads *through the log*: whichever stream collects
events from the core records them first, and each stream then sends the log from its own
position. So two streams on one queue (typically a client's new stream and the server side of
the connection it just dropped, not yet torn down) each see every number, in order: none of them
can take events the other then never sees.

A queue is *in use* while any call or stream is running on it: the lease counts only idle time,
so a call that waits longer than the lease keeps its queue. When the queue ends (CloseQueue, an
idle lease, shutdown) every call waiting on it is woken at once and told why (QueueClosedError).
Descriptor idents are the client's numbers in the queue's own table (DescriptorTable), never
the daemon's other descriptors.

With a state store, the queue writes down what it must not lose, and ``persist()`` makes it
durable: every knote a change touched (the queue is the core's admission hook, so it hears of
each knote created, modified or gone), and, before a Wait stream sends them, the events it
numbered together with the knotes those deliveries changed or dropped. A queue brought back
from the store after a restart starts with the events its objects owe (``inject``): the
EV_EOF of a descriptor whose object is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from kqd.core import (
    KQ_EV_DELETE,
    KQ_EV_DISPATCH,
    KQ_EV_RECEIPT,
    KQ_FILTER_READ,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    kevent,
    kqueue,
)
from kqd.core.linux import syscalls
from kqd.core.linux.knote import Knote
from kqd.daemon.admission import KnoteAdmission
from kqd.daemon.delivery_log import DeliveryLog
from kqd.daemon.descriptor_table import DescriptorTable
from kqd.daemon.metrics_delivery import delivery
from kqd.daemon.quotas import Usage
from kqd.daemon.readiness import Readiness
from kqd.daemon.store import QueueRecord, StateStore

FD_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE, KQ_FILTER_VNODE)
# Filters whose state changes when an event is delivered (expirations counted, the file's state
# seen): their knotes are written down again with each delivery, as is any EV_DISPATCH knote
# (disabled by its delivery). ONESHOT and exited PROC knotes go by themselves, and the release
# says so. A USER knote's consumed trigger is the exception, for speed (USER events are the
# high-rate case): the log itself says it was delivered (restore.py reads it so), and the
# knote is written down again at the next refresh(); until then the log keeps those events.
_STATEFUL = (KQ_FILTER_TIMER, KQ_FILTER_VNODE)
_NOT_A_DESCRIPTOR = 2**62
_CHUNK = 32  # changes applied per core call in a sliced changelist
TURN_SECONDS = 0.0003  # work a call does before letting the loop's other callbacks run
PERSIST_SLICE = 64  # knotes written down between two looks at the clock (~4 us each)
CLOSE_STEP = 128  # knotes a closing queue drops per step


class Turn:
    """Bounded work per loop turn for a call that goes through many items (a long
    changelist, a closed queue's knotes): ``if turn.due(): await turn.next()`` between items
    lets every other callback of the loop run once TURN_SECONDS of work has been done since the
    last time. The daemon has one event loop for every client, and a wake-up crosses several of
    its turns, so how long one turn can last bounds every other client's latency; counting
    items instead would bound it only for the cheapest kind of item."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = time.perf_counter() + TURN_SECONDS

    def due(self) -> bool:
        return time.perf_counter() >= self._until

    async def next(self) -> None:
        await asyncio.sleep(0)
        self._until = time.perf_counter() + TURN_SECONDS


_dropping: set[asyncio.Task[None]] = set()  # closed queues whose knotes are being dropped


def queue_key(queue_id: str) -> str:
    """How the daemon files a queue: a SHA-256 of its id (the id is never written down)."""
    return hashlib.sha256(queue_id.encode()).hexdigest()


class QueueClosedError(Exception):
    """The queue ended while a call was using it; the message says why."""


class RemoteQueue:
    """What a client's queue is on the daemon's side (see the module docstring)."""

    # Descriptors a queue holds besides its table: the kqueue's epoll, eventfd and timerfd.
    OWN_DESCRIPTORS = 3

    def __init__(
        self,
        lease: float,
        owner: str,
        usage: Usage,
        store: StateStore | None = None,
        key: str | None = None,
    ) -> None:
        """A queue of principal *owner*, whose *usage* has been charged for the queue and
        OWN_DESCRIPTORS; close() gives that back, with the table's descriptors. Without *key*
        a new queue with a new id (``queue_id``, handed to its client once); with one, a queue
        brought back from *store*."""
        self.queue_id = secrets.token_urlsafe(24) if key is None else ""  # 192 random bits
        self.key = key or queue_key(self.queue_id)
        self.owner = owner
        self.usage = usage
        self.store = store
        self.kq = kqueue()
        self.kq.admission = self
        self.policy: KnoteAdmission | None = None  # the owner's authorization and quotas
        self.lease = lease
        self.descriptors = DescriptorTable()
        self.log = DeliveryLog()
        self.users = 0  # calls and streams running on the queue now
        self.closed_because: str | None = None
        self.last_seen = time.monotonic()
        self._readiness = Readiness(self.kq.fileno())
        self._dirty: dict[tuple[int, int], tuple[int, int]] = {}  # client key -> core key
        self._delivered: dict[tuple[int, int], tuple[int, int]] = {}  # USER, since refresh()
        self._injected: list[kevent] = []

    @property
    def short(self) -> str:
        """How the queue appears in logs."""
        return self.key[:8]

    @contextlib.contextmanager
    def in_use(self) -> Iterator[RemoteQueue]:
        """Hold the queue for one call or stream: its lease does not run meanwhile."""
        self.users += 1
        try:
            yield self
        finally:
            self.users -= 1
            self.last_seen = time.monotonic()

    def expired(self, now: float) -> bool:
        return self.users == 0 and now - self.last_seen > self.lease

    def close(self, because: str) -> None:
        """End the queue, for every caller at once: wake every call waiting on it (they fail
        with *because*), close the kqueue (Kqueue.close_in_steps) and every descriptor of its
        table, and give back its quotas (queues, descriptors, and its knotes' knotes, timers
        and udata bytes). A second close does nothing. The store is not touched: a queue
        closed for good is dropped from it by the caller.

        What is left is dropping the kqueue's knotes, ~0.5 us each: in a running event loop a
        task does it TURN_SECONDS per loop turn (a queue of 300,000 knotes would otherwise
        hold up every client for ~0.15 s), giving back the daemon descriptors they hold (a
        PROC knote's pidfd) as each is closed, then the kqueue's own; without a loop, now."""
        if self.closed_because is not None:
            return
        self.closed_because = because
        self._readiness.wake()
        self.store = None  # what the knotes' release would write is no news any more
        if self.policy is not None:
            self.policy.settle()
        steps = self.kq.close_in_steps(CLOSE_STEP)
        for fd in self.descriptors.live():
            os.close(fd)
        self.usage.release("descriptors", len(self.descriptors.live()))
        self.usage.release("queues", 1)
        self.descriptors = DescriptorTable()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._drop_now(steps)
            return
        task = loop.create_task(self._drop_knotes(steps))
        _dropping.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_dropping.discard)

    async def _drop_knotes(self, steps: Iterator[int]) -> None:
        """Drop a closed queue's knotes, TURN_SECONDS of it per loop turn; cancelled (the
        daemon stops), the rest at once."""
        try:
            turn = Turn()
            for _left in steps:
                if turn.due():
                    await turn.next()
        finally:
            self._drop_now(steps)

    def _drop_now(self, steps: Iterator[int]) -> None:
        for _left in steps:
            pass
        self.usage.release_daemon_fds(self.OWN_DESCRIPTORS)  # closed by the last step

    def check_open(self) -> None:
        if self.closed_because is not None:
            raise QueueClosedError(self.closed_because)

    # ------------------------------------------------------------------ the core's admission

    def admit(self, change: kevent, existing: Knote | None) -> None:
        if self.policy is not None:
            self.policy.admit(change, existing)
        self._touched(change.ident, change.filter)

    def released(self, kn: Knote) -> None:
        if self.policy is not None:
            self.policy.released(kn)
        self._touched(kn.ident, kn.filter)

    def _touched(self, ident: int, filter_: int) -> None:
        if self.store is not None:
            number = self.descriptors.number(ident) if filter_ in FD_FILTERS else ident
            self._dirty[(number, filter_)] = (ident, filter_)

    # ------------------------------------------------------------------ persistence

    def record(self) -> QueueRecord:
        return QueueRecord(self.key, self.owner, None, self.lease, self.log.last_sequence)

    def persist(self) -> None:
        """Write down every knote touched since the last time, and make it all durable."""
        if self.store is not None:
            self._write_touched(len(self._dirty))
            self.store.commit()

    async def persist_in_turns(self) -> None:
        """``persist()`` with bounded work per loop turn (Turn): a changelist of ten thousand
        knotes is written down (~40 ms of snapshots and rows) without holding up every other
        client. Whatever another call's ``persist()`` writes meanwhile is simply done."""
        turn = Turn()
        while self.store is not None and self._dirty:
            self._write_touched(PERSIST_SLICE)
            if turn.due():
                await turn.next()
        if self.store is not None:
            self.store.commit()

    def _write_touched(self, count: int) -> None:
        """Write down (not yet durably) up to *count* of the knotes touched."""
        assert self.store is not None
        touched = list(itertools.islice(self._dirty.items(), count))
        puts, drops = [], []
        for (number, filter_), (ident, _) in touched:
            snapshot = self.kq.snapshot(ident, filter_)
            if snapshot is None:
                drops.append((number, filter_))
            else:
                snapshot.change.ident = number
                puts.append(snapshot)
        self.store.put_knotes(self.key, puts, self.log.last_sequence)
        self.store.drop_knotes(self.key, drops)
        for client_key, _ in touched:
            del self._dirty[client_key]

    def refresh(self) -> None:
        """Write down the USER knotes delivered since the last refresh, and let the log on
        disk forget what it no longer needs to keep (a second or so of housekeeping)."""
        if self.store is None:
            return
        for client_key, core_key in self._delivered.items():
            self._dirty.setdefault(client_key, core_key)
        self._delivered.clear()
        self.store.trim(self.key, self.log.last_sequence)
        self.persist()

    def inject(self, event: kevent) -> None:
        """An event the queue owes its client for a stored knote it could not re-arm (after a
        restart): delivered once, the knote's row going when the event is taken."""
        self._injected.append(event)

    def forget_knote(self, number: int, filter_: int) -> None:
        """Drop the stored knote (*number*, *filter_*) at the next persist()."""
        if self.store is not None:
            self._dirty[(number, filter_)] = (_NOT_A_DESCRIPTOR, filter_)

    # ------------------------------------------------------------------ descriptors

    def adopt(self, fd: int, kind: str, spec: dict[str, Any], number: int | None = None) -> int:
        """Take *fd* into the queue's table (its "descriptors" quota is already charged) and
        write it down; the client's number for it."""
        number = self.descriptors.add(fd, kind, spec, number)
        if self.store is not None:
            self.store.put_descriptor(self.key, number, kind, spec)
        return number

    def release_abandoned_peer_fds(self) -> list[int]:
        """Close our duplicates of descriptors their owner closed, replaced or took to its
        exit: a duplicate keeps a socket open, so holding on would hide the close from the
        peer. Returns the client's numbers closed."""
        me = os.getpid()
        gone = []
        for number, entry in list(self.descriptors.entries.items()):
            if entry.kind != "peer" or entry.real is None:
                continue
            try:
                still_shared = syscalls.same_file_description(
                    entry.spec["pid"], entry.spec["fd"], me, entry.real
                )
            except OSError as exc:
                # EBADF/ESRCH: their descriptor or the process is gone. EPERM/ENOSYS: kcmp is
                # forbidden here (a container without CAP_SYS_PTRACE): keep the duplicate.
                still_shared = exc.errno not in (errno.EBADF, errno.ESRCH)
            if not still_shared:
                self.close_descriptor(number)
                gone.append(number)
        return gone

    def close_descriptor(self, number: int) -> None:
        """Close *number* of the queue's table, dropping its knotes first (as close(2) does)."""
        real = self.descriptors.real(number)
        if real is not None:
            self.kq.control(
                [kevent(real, filt, KQ_EV_DELETE | KQ_EV_RECEIPT) for filt in FD_FILTERS],
                len(FD_FILTERS),
                0,
            )
        self.persist()
        self.descriptors.remove(number)
        if self.store is not None:
            self.store.drop_descriptor(self.key, number)
        if real is not None:
            os.close(real)
            self.usage.release("descriptors", 1)

    # ------------------------------------------------------------------ events

    def confine(self, changes: list[kevent]) -> tuple[list[kevent], dict[int, int]]:
        """Descriptor idents name the queue's own table: each is swapped for the daemon's
        descriptor behind it; one the table does not hold (or holds dead) for an ident no
        descriptor can have, so the core answers EBADF at its place in the changelist. The map
        gives the client's idents back."""
        confined, restore = [], {}
        for index, change in enumerate(changes):
            if change.filter in FD_FILTERS:
                real = self.descriptors.real(change.ident)
                if real is None:
                    real = _NOT_A_DESCRIPTOR + index
                if real != change.ident:
                    restore[real] = change.ident
                    change = kevent(
                        real, change.filter, change.flags, change.fflags, change.data, change.udata
                    )
            confined.append(change)
        return confined, restore

    def _collect(self, max_events: int) -> list[kevent]:
        """Events owed since a restart first; then events from the core, with the client's
        descriptor numbers."""
        if self._injected:
            owed, self._injected = self._injected[:max_events], self._injected[max_events:]
            for ev in owed:
                self.forget_knote(ev.ident, ev.filter)
            return owed
        events = self.kq.control(None, max_events, 0)
        number = self.descriptors.number
        for ev in events:
            if ev.filter in FD_FILTERS:
                ev.ident = number(ev.ident)
        return events

    def _apply(self, changes: list[kevent], max_events: int) -> list[kevent] | None:
        """The core's apply(), the owner's rules looked up once for all of *changes*."""
        if self.policy is None:
            return self.kq.apply(changes, max_events)
        with self.policy.batch():
            return self.kq.apply(changes, max_events)

    def control_now(self, changes: list[kevent], max_events: int) -> list[kevent]:
        """The core's control() with a zero timeout, confined to the queue's descriptors."""
        self.check_open()
        confined, restore = self.confine(changes)
        receipts = self._apply(confined, max_events)
        if receipts is not None:
            for ev in receipts:
                ev.ident = restore.get(ev.ident, ev.ident)
            return receipts
        return self._collect(max_events) if max_events else []

    async def control(
        self, changes: list[kevent], max_events: int, timeout: float | None
    ) -> list[kevent]:
        """kevent(2) in one round trip, without blocking the event loop: a long changelist
        with nowhere to report (max_events 0, the usual registration) is applied TURN_SECONDS
        of work per loop turn (Turn), so other clients' calls are served in between (the same
        outcome: with no room, the first failing change raises and ends the call)."""
        if max_events == 0 and len(changes) > _CHUNK:
            turn = Turn()
            for start in range(0, len(changes), _CHUNK):
                self.check_open()
                if self._apply(self.confine(changes[start : start + _CHUNK])[0], 0) is not None:
                    break  # a receipt with no room to report it ends the call, as in FreeBSD
                if turn.due():
                    await turn.next()
            return []
        events = self.control_now(changes, max_events)
        if events or max_events == 0 or timeout == 0:
            return events
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
            await self._readiness.wait(remaining)
            self.check_open()
            events = self._collect(max_events)
            if events:
                return events

    async def next_batch(
        self, after: int, max_batch: int, heartbeat: float
    ) -> list[tuple[int, kevent]]:
        """Events after sequence *after*, from the log; [] when *heartbeat* seconds pass with
        nothing new. The log is consulted at every turn, not only at the start: another stream
        of this queue may have collected (and numbered) events meanwhile. New events are
        durable (with the knotes their delivery changed) before they are returned."""
        deadline = time.monotonic() + heartbeat
        while True:
            self.check_open()
            if after < self.log.last_sequence:
                return self.log.after(after, max_batch)
            fresh = self._collect(max_batch)
            if fresh:
                batch = self.log.record(fresh)
                delivery.collected(self, len(fresh))
                if self.store is not None:
                    for ev in fresh:
                        if ev.filter in _STATEFUL or ev.flags & KQ_EV_DISPATCH:
                            self._dirty.setdefault((ev.ident, ev.filter), self._core_key(ev))
                        elif ev.filter == KQ_FILTER_USER:
                            self._delivered[(ev.ident, ev.filter)] = (ev.ident, ev.filter)
                    self.store.append_events(self.key, batch)
                    self.persist()
                self._readiness.wake()  # the other streams of this queue have news too
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            await self._readiness.wait(remaining)

    def _core_key(self, ev: kevent) -> tuple[int, int]:
        real = self.descriptors.real(ev.ident) if ev.filter in FD_FILTERS else ev.ident
        return (ev.ident if real is None else real, ev.filter)
