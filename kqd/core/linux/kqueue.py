"""kqueue(2) on Linux: the knote table, the active queue and ``control()``.

How a FreeBSD kqueue maps onto one epoll instance
-------------------------------------------------
The kernel's kqueue keeps, per knote, the state a filter computed and a place in one queue of
active knotes; ``kevent()`` walks that queue and nothing else. This class keeps the same two
structures in Python and lets epoll play the part of the kernel's wake-up hooks:

* every kernel object a filter watches (a pidfd, a user's socket, the shared inotify or proc
  connector descriptor) is one *source* registered in this kqueue's epoll. When epoll reports a
  source ready, its handler calls ``activate(kn, hint)``: the filter folds the hint into the
  knote, and the knote joins the active queue if it is not there yet;
* timers need no descriptor each: a heap of deadlines drives a single timerfd;
* one eventfd (``_wake``) is readable whenever the active queue is non-empty or another thread
  posted work, so ``fileno()`` is readable exactly while events are pending (a kqueue can sit in
  ``selectors`` or in another kqueue), and a thread blocked in ``control()`` wakes up when a
  second thread makes a change that activates a knote;
* ``control()`` drains ready sources without blocking, then scans the active queue. The scan
  only ever touches queued knotes, so one wait costs O(events returned), never O(registered).

Level-triggered knotes (no EV_CLEAR) go back to the tail of the queue after delivery and the
filter is asked again at the next scan, exactly as ``kqueue_scan()`` does: when the condition no
longer holds the knote silently leaves the queue. Sources are watched edge-triggered (EPOLLET):
epoll only has to say "something changed", the filter always reads the real state.

Locking: one re-entrant lock guards all of the above. The blocking ``epoll_wait`` happens outside
it, so other threads can change the queue meanwhile; what they change reaches the waiter through
the epoll (new sources) or the wake eventfd (activations, posted callbacks, timers).
``post()`` is called from other kqueues' pumps (a shared inotify or connector descriptor) and from
signal handlers, where taking this lock could deadlock; so the wake eventfd has a leaf lock of its
own, never held while taking another, which ``close()`` takes to close it. A late ``post()`` is
then a no-op, never a write to a descriptor number that names something else by now.

``close()`` releases every descriptor at once (epoll, timerfd, each knote's pidfd, duplicate or
subscription), not when the garbage collector gets round to the reference cycles between a
kqueue, its filters and its knotes. The one exception is the wake eventfd while other threads
still wait in ``epoll_wait``: closing it would take it out of the epoll before they saw it
written, and they would sleep on. The last of them to leave closes it.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import os
import select
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from kqd.core.constants import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_DISABLE,
    KQ_EV_DISPATCH,
    KQ_EV_ENABLE,
    KQ_EV_ERROR,
    KQ_EV_FORCEONESHOT,
    KQ_EV_KEEPUDATA,
    KQ_EV_ONESHOT,
    KQ_EV_RECEIPT,
    KQ_EV_SYSFLAGS,
)
from kqd.core.control_args import check_control_args
from kqd.core.kevent import kevent
from kqd.core.linux import syscalls
from kqd.core.linux.fdtable import FdTable
from kqd.core.linux.filter import Filter
from kqd.core.linux.knote import Knote, KnoteSnapshot

_EPOLL_BATCH = 1024
# epoll_wait takes int milliseconds (about 24.8 days); a longer wait is made of several.
_MAX_POLL_SECONDS = 86_400.0
_ALL = 2**62  # close(): every knote in one step
# Flags that act on one change and are not kept in the knote.
_KEPT_FLAGS_MASK = (
    ~(KQ_EV_ADD | KQ_EV_DELETE | KQ_EV_ENABLE | KQ_EV_DISABLE | KQ_EV_FORCEONESHOT) & 0xFFFF
)

# Every kqd kqueue by its fileno, so that READ on a kqueue can report its pending count.
_open_kqueues: weakref.WeakValueDictionary[int, Kqueue] = weakref.WeakValueDictionary()


def pending_count(fd: int) -> int | None:
    """Events pending in the kqd kqueue whose fileno is *fd*, or None if *fd* is not one."""
    kq = _open_kqueues.get(fd)
    return None if kq is None else len(kq._queue)


class Source(Protocol):
    """A descriptor in this kqueue's epoll, and what to do when it is ready."""

    def on_ready(self, events: int) -> None: ...

    def on_stale(self) -> None:
        """The descriptor number now belongs to something else: forget it."""


class Admission(Protocol):
    """Who may hold which knotes: asked before each knote is created or modified, and told when
    one goes. FreeBSD's kqueue makes the same kind of checks at registration (``p_cansee`` in
    filt_procattach, file permissions, the per-uid knote and callout counts); a host of many
    callers (the daemon) plugs its authorization and quotas in here, so a refusal is an errno
    at the change's place in the changelist, like any other failed change."""

    def admit(self, change: kevent, existing: Knote | None) -> None:
        """Raise OSError(errno) to refuse *change*; *existing* is None when it creates a knote."""

    def released(self, kn: Knote) -> None:
        """*kn* is gone (deleted, delivered ONESHOT, its descriptor closed, the queue closed)."""


class TimerHandle:
    """A scheduled callback; ``cancel()`` makes it a no-op."""

    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: int, callback: Callable[[int], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Kqueue:
    """A kqueue: ``control(changelist, max_events, timeout=None)`` as in ``select.kqueue``.

    Thread-safe; see the module docstring for how it maps onto epoll.
    """

    def __init__(self) -> None:
        from kqd.core.linux.filters import FILTERS

        self._lock = threading.RLock()
        self._closed = False  # for every caller: see close_in_steps
        self._released = False  # every knote dropped, the own descriptors closed
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # A leaf lock: post()'s write against close(). Re-entrant because the signal filter's
        # Python-level handler posts, and may run in the main thread in the middle of a post().
        self._wake_lock = threading.RLock()
        self._wake_armed = False
        self._waiters = 0  # threads in epoll_wait, outside the lock
        self._timerfd = syscalls.timerfd_create()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._epoll.register(self._timerfd, select.EPOLLIN)
        self._timers: list[tuple[int, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._timerfd_deadline: int | None = None
        self._running_timers = False
        self._sources: dict[int, Source] = {}
        self._inbox: deque[Callable[[], None]] = deque()
        self._knotes: dict[tuple[int, int], Knote] = {}
        self._queue: OrderedDict[Knote, None] = OrderedDict()
        self.fds = FdTable(self)
        self.admission: Admission | None = None
        self._filters: dict[int, Filter] = {value: cls(self) for value, cls in FILTERS.items()}
        _open_kqueues[self._epoll.fileno()] = self

    # ----------------------------------------------------------------- public API

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """A descriptor that polls readable while events are pending."""
        self._check_open()
        return self._epoll.fileno()

    def __enter__(self) -> Kqueue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._epoll.fileno()}"
        return f"<kqd.core.kqueue {state} knotes={len(self._knotes)}>"

    def __del__(self) -> None:
        # Like select.kqueue, a forgotten kqueue gives its descriptors back when collected.
        with contextlib.suppress(Exception):
            self.close()

    def count_by_filter(self) -> Counter[int]:
        """How many knotes this kqueue holds, by filter: a snapshot for monitoring, O(knotes)."""
        with self._lock:
            return Counter(filt for _ident, filt in self._knotes)

    def close(self) -> None:
        """Drop every knote and release every descriptor now; a second close does nothing
        (a close begun by ``close_in_steps`` is finished). A thread blocked in ``control()``
        wakes up and raises ValueError."""
        for _left in self.close_in_steps(_ALL):
            pass

    def close_in_steps(self, step: int = 1024) -> Iterator[int]:
        """``close()`` for a host that must not stop for all of it at once (a kqueue of
        300,000 knotes takes ~0.1 s to drop): the kqueue is closed when this returns, and the
        iterator returned drops its knotes, up to *step* per ``next()``.

        Closed means closed for every caller from this call on: ``control()``, ``apply()``,
        ``fileno()`` and the rest raise ValueError, a thread blocked in ``control()`` wakes up
        and raises, nothing is delivered or queued any more and ``post()`` does nothing; the
        knotes on the user's descriptors (READ, WRITE, VNODE: a few per descriptor) are
        dropped before this returns. Each step drops other knotes as ``close()`` does (the
        filter releases what the knote holds: a pidfd, a timer; the admission hears of each)
        and yields how many are left; after the last one the kqueue's own descriptors (epoll,
        timerfd, wake eventfd) are closed and the iterator ends. ``close()`` (or the garbage
        collector) finishes what an abandoned iterator left; a second call returns an
        iterator over what is left.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                _open_kqueues.pop(self._epoll.fileno(), None)
                self._queue.clear()  # nothing is delivered any more
                self._inbox.clear()
                # Knotes on the user's descriptors go now (a few per descriptor at most), so
                # the caller may close or reuse those numbers at once, as after close().
                for kn in self.fds.knotes():
                    self.drop(kn)
                if self._waiters:
                    os.eventfd_write(self._wake, 1)  # wake them; the last one out closes it
        return self._drop_in_steps(step)

    def _drop_in_steps(self, step: int) -> Iterator[int]:
        """The steps of a close (see ``close_in_steps``)."""
        while True:
            with self._lock:
                if self._released:
                    return
                knotes = self._knotes
                for _ in range(min(step, len(knotes))):
                    # popitem: O(1) from the end, where deleting from the front would make
                    # every next look-up skip the holes left (O(n**2) over a large table).
                    self.drop(knotes.popitem()[1])
                left = len(knotes)
                if not left:
                    self._release_own()
                    return
            yield left

    def _release_own(self) -> None:
        """The last step of a close: the kqueue's own descriptors, and the references that
        tie it to its filters and its host (cycles the garbage collector need not find)."""
        self._released = True
        self._queue.clear()
        self._inbox.clear()
        if not self._waiters:
            self._close_wake()  # else the last thread out of epoll_wait closes it
        self._epoll.close()
        os.close(self._timerfd)
        self._timers.clear()
        self._sources.clear()
        self._filters.clear()
        self.admission = None

    def control(
        self,
        changelist: Iterable[kevent] | None,
        max_events: int,
        timeout: float | None = None,
    ) -> list[kevent]:
        """Apply *changelist*, then return up to *max_events* pending events.

        *timeout* None waits forever, 0 polls; ``max_events == 0`` never waits. A change that
        fails (or any change with KQ_EV_RECEIPT) is reported as a KQ_EV_ERROR entry with the
        errno in ``data``, and then no events are collected in that call; when there is no room
        left to report a failure the call raises OSError with that errno.
        """
        changes, max_events, wait = check_control_args(changelist, max_events, timeout)
        receipts = self.apply(changes, max_events)
        if receipts is not None:
            return receipts
        if max_events == 0:
            return []
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            with self._lock:
                self._check_open()
                self._drain_ready()
                events = self._scan(max_events)
                if events:
                    return events
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._waiters += 1
            try:
                poll_for = -1 if remaining is None else min(remaining, _MAX_POLL_SECONDS)
                ready = self._epoll.poll(poll_for, _EPOLL_BATCH)
            finally:
                with self._lock:
                    self._waiters -= 1
                    if self._closed and not self._waiters:
                        self._close_wake()
            with self._lock:
                self._check_open()
                self._pump(ready)

    def snapshot(self, ident: int, filter: int) -> KnoteSnapshot | None:  # noqa: A002 - kevent's name
        """The definition and state of the knote (*ident*, *filter*), for ``restore`` into
        another kqueue later, even in another process; None when there is no such knote (a
        knote whose descriptor was closed is gone, as at delivery).

        A snapshot is exact as of this call: take a fresh one after every change and every
        delivery of the knote to keep a stored copy exact. What happens in between is found
        again by ``restore`` where the object keeps a trace (a timer's schedule, a file's
        inode, a process's exit), and is lost otherwise.
        """
        with self._lock:
            self._check_open()
            kn = self._knotes.get((ident, filter))
            if kn is None or (kn.fop.is_fd and not self.fds.alive(kn)):
                return None
            change = kevent._trusted(kn.ident, kn.filter, kn.flags, kn.sfflags, kn.sdata, kn.udata)
            return KnoteSnapshot(change, kn.disabled, kn.fop.snapshot(kn))

    def restore(self, snapshot: KnoteSnapshot) -> None:
        """Re-create the knote *snapshot* describes, as it was: its flags as stored (this is
        not EV_ADD, which would modify an existing knote: EEXIST if there is one), disabled or
        not, and its filter's state, which the filter re-arms on the object after checking that
        it is the same one (see each filter's ``restore``); an active knote is queued.

        The change goes through ``admission`` as a registration does. Raises OSError(errno)
        when the knote cannot be re-created at all (EBADF: the ident is not a descriptor here;
        or whatever the filter's attach would refuse), and then nothing of it is left.
        """
        change = snapshot.change
        with self._lock:
            self._check_open()
            fop = self._filter_of(change)
            if (change.ident, change.filter) in self._knotes:
                raise OSError(errno.EEXIST, "the knote exists already")
            if self.admission is not None:
                self.admission.admit(change, None)
            kn = self._create(
                change, change.flags, snapshot.disabled, lambda kn: fop.restore(kn, snapshot.state)
            )
            if not kn.disabled and fop.event(kn, None):
                kn.active = True
            if kn.active:
                self._enqueue(kn)

    def apply(self, changes: list[kevent], max_events: int) -> list[kevent] | None:
        """control()'s first half, for hosts that collect events their own way: apply
        *changes* (checked already) with control()'s rules; the EV_ERROR entries to return,
        or None when control() would go on to collect events."""
        with self._lock:
            self._check_open()
            return self._apply(changes, max_events)

    # ----------------------------------------------------------------- services for filters

    def activate(self, kn: Knote, hint: object) -> None:
        """A source saw *hint* for *kn*: ask the filter, and queue the knote if it is active."""
        if kn.dropped:
            return
        if kn.fop.event(kn, hint):
            kn.active = True
            self._enqueue(kn)

    def add_source(self, fd: int, events: int, source: Source) -> None:
        """Watch *fd* in this kqueue's epoll; raises OSError (EPERM for regular files)."""
        stale = self._sources.pop(fd, None)
        if stale is not None:
            stale.on_stale()
        self._epoll.register(fd, events)
        self._sources[fd] = source

    def owns_fd(self, fd: int) -> bool:
        """Is *fd* one of this kqueue's own descriptors (or watched by it)?"""
        return fd in (self._wake, self._timerfd, self._epoll.fileno()) or fd in self._sources

    def source_of(self, fd: int) -> Source | None:
        return self._sources.get(fd)

    def modify_source(self, fd: int, events: int) -> None:
        """Re-arm *fd*; raises OSError (ENOENT/EBADF) when *fd* is no longer what was added."""
        self._epoll.modify(fd, events)

    def remove_source(self, fd: int, *, registered: bool = True) -> None:
        """Stop watching *fd*; *registered* False when the kernel already dropped it."""
        self._sources.pop(fd, None)
        if registered:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def post(self, callback: Callable[[], None]) -> None:
        """Run *callback* under this kqueue's lock at its next pump. Safe from any thread;
        does nothing once the kqueue is closed."""
        with self._wake_lock:
            if self._closed:
                return
            self._inbox.append(callback)
            os.eventfd_write(self._wake, 1)

    def call_at(self, deadline_ns: int, callback: Callable[[int], None]) -> TimerHandle:
        """Call ``callback(now_ns)`` at CLOCK_MONOTONIC *deadline_ns* (or soon after)."""
        handle = TimerHandle(deadline_ns, callback)
        heapq.heappush(self._timers, (deadline_ns, next(self._timer_seq), handle))
        # The timerfd only has to fire for the earliest deadline: re-arm it (a syscall) when
        # this one comes first, never while the due timers run (they re-arm it once, after).
        armed = self._timerfd_deadline
        if not self._running_timers and (armed is None or deadline_ns < armed):
            self._arm_timerfd()
        return handle

    def register(self, change: kevent) -> int:
        """Apply one change; the errno, or 0. Filters use it to create NOTE_TRACK knotes."""
        try:
            self._register(change)
        except OSError as exc:
            return exc.errno or errno.EINVAL
        return 0

    def enqueue_anonymous(self, kn: Knote) -> None:
        """Queue a knote that is not in the (ident, filter) table (a NOTE_CHILD notice)."""
        kn.anonymous = True
        kn.active = True
        self._enqueue(kn)

    def drop(self, kn: Knote) -> None:
        """Detach and forget *kn* with any pending event (EV_DELETE, ONESHOT, close)."""
        if kn.dropped:
            return
        kn.dropped = True
        if not kn.anonymous and self._knotes.get(kn.key) is kn:
            del self._knotes[kn.key]
        self._queue.pop(kn, None)
        kn.queued = False
        kn.fop.detach(kn)
        if self.admission is not None and not kn.anonymous:
            self.admission.released(kn)

    def dequeue(self, kn: Knote) -> None:
        """Take *kn* out of the active queue and forget that it was active (timer re-add)."""
        self._queue.pop(kn, None)
        kn.queued = False
        kn.active = False

    # ----------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed kqueue object")

    def _close_wake(self) -> None:
        with self._wake_lock:
            if self._wake >= 0:
                os.close(self._wake)
                self._wake = -1

    def _enqueue(self, kn: Knote) -> None:
        if kn.queued or kn.disabled or kn.dropped:
            return
        kn.queued = True
        self._queue[kn] = None
        if not self._wake_armed:
            self._wake_armed = True
            os.eventfd_write(self._wake, 1)

    def _apply(self, changes: list[kevent], max_events: int) -> list[kevent] | None:
        """kevent(2)'s changelist loop; the receipts/errors to return, or None to go on."""
        receipts: list[kevent] = []
        room = max_events
        for change in changes:
            if change.filter == 0:
                continue  # FreeBSD skips filter 0 silently
            try:
                self._register(change)
                error = 0
            except OSError as exc:
                error = exc.errno or errno.EINVAL
                reason = exc.strerror or os.strerror(error)
            if error == 0 and not change.flags & KQ_EV_RECEIPT:
                continue
            if room == 0:
                if error:
                    raise OSError(
                        error,
                        f"change {change!r} failed: {reason}; there was no room in the "
                        "eventlist to report it (pass max_events > 0 to get one KQ_EV_ERROR "
                        "entry per failed change)",
                    )
                # A receipt without room ends the call, as in FreeBSD: later changes are
                # not applied and nothing is returned.
                return []
            receipts.append(
                kevent(change.ident, change.filter, KQ_EV_ERROR, change.fflags, error, change.udata)
            )
            room -= 1
        return receipts or None

    def _register(self, change: kevent) -> None:
        """``kqueue_register()``: create, modify, delete, enable or disable one knote.

        A change to an existing knote goes in FreeBSD's order: EV_DELETE ends it;
        EV_FORCEONESHOT makes it ONESHOT and active, so the next scan delivers it once, whatever
        its filter would say, and deletes it; EV_ENABLE/EV_DISABLE; udata is replaced unless
        EV_KEEPUDATA; the filter takes the new note mask and data. EV_FORCEONESHOT is ignored
        on creation, and EV_KEEPUDATA with EV_ADD is EINVAL.
        """
        flags = change.flags & ~KQ_EV_SYSFLAGS
        if flags & (KQ_EV_ENABLE | KQ_EV_DISABLE) == KQ_EV_ENABLE | KQ_EV_DISABLE:
            raise OSError(errno.EINVAL, "KQ_EV_ENABLE and KQ_EV_DISABLE together")
        if flags & KQ_EV_ADD and flags & KQ_EV_KEEPUDATA:
            raise OSError(
                errno.EINVAL,
                "KQ_EV_KEEPUDATA keeps an existing knote's udata: use it without KQ_EV_ADD",
            )
        fop = self._filter_of(change)
        kn = self._knotes.get((change.ident, change.filter))
        if kn is None and not flags & KQ_EV_ADD:
            raise OSError(errno.ENOENT, "no such knote")
        if self.admission is not None and not (kn is not None and flags & KQ_EV_DELETE):
            self.admission.admit(change, kn)
        if kn is None:
            kn = self._create(change, flags, bool(flags & KQ_EV_DISABLE), fop.attach)
        elif flags & KQ_EV_DELETE:
            self.drop(kn)
            return
        else:
            if flags & KQ_EV_FORCEONESHOT:
                kn.flags |= KQ_EV_ONESHOT
                kn.active = True
            if not flags & KQ_EV_KEEPUDATA:
                kn.udata = change.udata
            fop.touch(kn, change)
        if flags & KQ_EV_ENABLE:
            kn.disabled = False
        elif flags & KQ_EV_DISABLE:
            kn.disabled = True
            self._queue.pop(kn, None)
            kn.queued = False
        if not kn.disabled and fop.event(kn, None):
            kn.active = True
        if kn.active:
            self._enqueue(kn)

    def _filter_of(self, change: kevent) -> Filter:
        """The filter *change* names, its ident checked: EINVAL for an unknown filter or this
        kqueue itself, EBADF for a descriptor filter's ident that is no descriptor."""
        fop = self._filters.get(change.filter)
        if fop is None:
            raise OSError(errno.EINVAL, f"unknown filter {change.filter}")
        if fop.is_fd:
            if change.ident == self._epoll.fileno():
                raise OSError(errno.EINVAL, "a kqueue cannot watch itself")
            self.fds.check(change.ident)
        return fop

    def _create(
        self, change: kevent, flags: int, disabled: bool, arm: Callable[[Knote], None]
    ) -> Knote:
        """A new knote for *change* (admitted already), armed on its object by *arm* (the
        filter's attach or restore) and entered in the table; if *arm* fails, the admission
        hears the knote is gone and nothing of it is left."""
        kn = Knote(
            ident=change.ident,
            filter=change.filter,
            flags=flags & _KEPT_FLAGS_MASK,
            sfflags=change.fflags,
            sdata=change.data,
            udata=change.udata,
            fop=self._filters[change.filter],
            disabled=disabled,
        )
        try:
            arm(kn)
        except BaseException:
            if self.admission is not None:
                self.admission.released(kn)
            raise
        self._knotes[kn.key] = kn
        return kn

    def _drain_ready(self) -> None:
        """Pump every source that is ready now, however many (epoll hands them out in batches)."""
        while True:
            ready = self._epoll.poll(0, _EPOLL_BATCH)
            self._pump(ready)
            if len(ready) < _EPOLL_BATCH:
                return

    def _pump(self, ready: list[tuple[int, int]]) -> None:
        """Hand ready sources to their handlers, then run posted callbacks and due timers."""
        for fd, events in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
                self._wake_armed = False
            elif fd == self._timerfd:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._timerfd, 8)
                self._timerfd_deadline = None
            else:
                source = self._sources.get(fd)
                if source is not None:
                    source.on_ready(events)
        while self._inbox:
            self._inbox.popleft()()
        if self._timers and self._timers[0][0] <= time.monotonic_ns():
            self._run_timers()

    def _run_timers(self) -> None:
        now = time.monotonic_ns()
        self._running_timers = True
        try:
            while self._timers and self._timers[0][0] <= now:
                handle = heapq.heappop(self._timers)[2]
                if not handle.cancelled:
                    handle.callback(now)
        finally:
            self._running_timers = False
        self._arm_timerfd()

    def _arm_timerfd(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if len(self._timers) > 64 and sum(t[2].cancelled for t in self._timers[:64]) > 32:
            self._timers = [t for t in self._timers if not t[2].cancelled]
            heapq.heapify(self._timers)
        deadline = self._timers[0][0] if self._timers else None
        if deadline != self._timerfd_deadline:
            syscalls.timerfd_arm(self._timerfd, deadline)
            self._timerfd_deadline = deadline

    def _scan(self, max_events: int) -> list[kevent]:
        """``kqueue_scan()``: deliver up to *max_events* queued knotes, each at most once."""
        out: list[kevent] = []
        queue, make = self._queue, kevent._trusted  # the hot loop of every wait
        for _ in range(len(queue)):  # knotes found inactive or closed do not count
            if len(out) >= max_events:
                break
            kn, _none = queue.popitem(last=False)
            kn.queued = False
            fop = kn.fop
            if kn.drop_unreported:
                self.drop(kn)
                continue
            if fop.is_fd and not self.fds.alive(kn):
                continue  # the descriptor was closed: its knotes are gone, stale state too
            flags = kn.flags
            if flags & KQ_EV_ONESHOT:
                fflags, data = fop.report(kn)
                out.append(make(kn.ident, kn.filter, flags, fflags, data, kn.udata))
                self.drop(kn)
                continue
            if not fop.event(kn, None):
                kn.active = False
                continue
            fflags, data = fop.report(kn)
            out.append(make(kn.ident, kn.filter, flags, fflags, data, kn.udata))
            if flags & (KQ_EV_CLEAR | KQ_EV_DISPATCH):
                if flags & KQ_EV_DISPATCH:
                    kn.disabled = True
                kn.active = False
            else:
                kn.queued = True
                queue[kn] = None
        if not self._queue and self._wake_armed:
            # Nothing pending any more: make fileno() stop polling readable.
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake)
            self._wake_armed = False
            if self._inbox:
                self.post(lambda: None)  # keep the wake-up for callbacks still waiting
        return out
