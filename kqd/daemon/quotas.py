"""Per-principal quotas: what one caller may hold in the daemon, and how fast it may change it.

kqd runs for many callers at once, often as root, so what one caller holds must never starve
another or the daemon itself. Every principal (``Principal.name``: "uid:1000", "tls:alice", ...)
has one :class:`Usage`, found through :class:`Accounts`, with a counter per kind of resource and
a token bucket for changes. The service charges a resource before it takes it and releases it
when it gives it back; every check is O(1) (a dictionary lookup and a comparison under one
lock), so charging costs nothing next to the gRPC call around it.

Kinds and their default limits (:class:`Limits`; the policy, ``kqd/daemon/policy.py``,
overrides them per principal under ``quotas``):

=====================  ===========  ====================================================
quota                  default      what it counts
=====================  ===========  ====================================================
queues                 1,024        queues the principal has open (CreateQueue)
knotes                 100,000      knotes registered in all its queues
descriptors            1,024        descriptors in its queues' tables (Open, OpenPeerFd,
                                    OpenConnection); also charged to the daemon's budget
streams                64           Wait streams in progress
udata_bytes            64 MiB       bytes of udata its knotes hold
timers                 1,000        TIMER knotes
min_timer_period_ms    1            the shortest period a TIMER knote may ask for
                                    (0: no minimum); checked, not counted
changes_per_second     200,000      changes (Register, Unregister, Kevent) per second,
                                    with a burst of one second's worth
=====================  ===========  ====================================================

A limit of 0 allows none. A limit lowered below what a principal already holds (a policy
reloaded on SIGHUP) refuses new charges until enough is released; nothing is taken away.

**Charging so that nothing leaks.** An operation that fails after its charge must give the charge
back, on every path, exceptions included. So the usual shape is a :class:`Bill`: charges made
through it are undone when the block raises and kept when it completes::

    usage.take_changes(len(changes), rules.quotas.changes_per_second)
    with usage.bill() as bill:
        bill.charge("descriptors", 1, rules.quotas.descriptors)
        fd = await open_it()          # raises: the descriptor is released again
        table.add(fd)                 # done: kept, release("descriptors", 1) when it is closed

``Usage.hold()`` is a bill of one charge; ``Usage.borrow()`` charges for exactly the block (a
Wait stream: ``with usage.borrow("streams", 1, limit):``). ``Usage.charge``/``Usage.release``
are the bare operations, for resources whose life is not one block (a knote deleted by a later
call). ``Bill.commit()``/``Bill.rollback()`` do explicitly what the ``with`` block does.
``Usage.check_timer_period()`` applies min_timer_period_ms.

**The daemon's descriptors.** Every descriptor the daemon opens counts against its own
RLIMIT_NOFILE, shared by all callers. :class:`DescriptorBudget` keeps a reserve no principal may
use (``max(64, 5%)`` of the soft limit), so the daemon can always accept connections, start
caller helpers and answer health checks; and it caps each principal at half of what remains
(``principal_share``), so no single principal can exhaust it for all the others. The
"descriptors" kind is charged to both the principal's quota and the budget, atomically; other
descriptors the daemon opens for a caller (a queue's epoll, eventfd and timerfd; a PROC knote's
pidfd) can be charged to the budget alone through :meth:`Usage.charge_daemon_fds`. The service
may raise the soft limit to the hard one at start (:func:`raise_nofile_limit`) before sizing the
budget.

**Refusals.** :class:`QuotaExceeded` carries a message that names the principal, the quota, the
limit, the current use and what to do; the service turns it into RESOURCE_EXHAUSTED (its
``errno`` attribute, when not None, is the errno the kernel would give for the same shortage).
"""

from __future__ import annotations

import errno
import logging
import resource
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Literal, get_args

log = logging.getLogger("kqd.daemon")

Kind = Literal["queues", "knotes", "descriptors", "streams", "udata_bytes", "timers"]
KINDS: tuple[Kind, ...] = get_args(Kind)

#: The daemon keeps at least this many descriptors for itself (or 5% of RLIMIT_NOFILE, if more).
MIN_RESERVE = 64
RESERVE_FRACTION = 0.05
#: No principal may hold more than this fraction of the descriptors callers can have.
PRINCIPAL_SHARE = 0.5


@dataclass(frozen=True)
class Limits:
    """One principal's limits (see the module docstring for what each counts)."""

    queues: int = 1024
    knotes: int = 100_000
    descriptors: int = 1024
    streams: int = 64
    udata_bytes: int = 64 * 1024 * 1024
    timers: int = 1000
    min_timer_period_ms: int = 1
    changes_per_second: int = 200_000

    def of(self, kind: Kind) -> int:
        """The limit for *kind*."""
        return int(getattr(self, kind))


LIMIT_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Limits))

# What a principal over a quota can do about it, by itself; the message adds the operator's part.
_ADVICE: dict[str, str] = {
    "queues": "close queues you no longer need (CloseQueue), or let idle ones expire",
    "knotes": "delete knotes you no longer need (EV_DELETE), or close descriptors or queues",
    "descriptors": "close descriptors (CloseDescriptor) or queues you no longer need",
    "streams": "end Wait streams you no longer read; one stream per queue is enough",
    "udata_bytes": "send smaller udata, or delete knotes you no longer need",
    "timers": "delete TIMER knotes you no longer need",
}
# The errno the kernel gives for the same shortage, for the "kqd-errno" trailer.
_ERRNO: dict[str, int | None] = {
    "queues": errno.EMFILE,  # kqueue(2) needs a descriptor
    "knotes": errno.ENOMEM,  # kevent(2) cannot allocate a knote
    "descriptors": errno.EMFILE,
    "streams": None,
    "udata_bytes": errno.ENOMEM,
    "timers": errno.ENOMEM,
    "changes_per_second": errno.EAGAIN,
    "min_timer_period_ms": errno.EINVAL,
    "daemon descriptors": errno.ENFILE,  # the system-wide shortage, as seen by this caller
}


class QuotaExceeded(Exception):  # noqa: N818 - named for what happened, as in the brief
    """A charge over a limit. ``str()`` is the whole message for the client; the attributes are
    for logs and metadata: *principal*, *quota* (a kind, "changes_per_second",
    "min_timer_period_ms" or "daemon descriptors"), *limit*, *used*, *requested*, *errno*
    (or None) and *retry_after* (seconds, for the change rate; else None)."""

    def __init__(
        self,
        message: str,
        *,
        principal: str,
        quota: str,
        limit: int,
        used: int,
        requested: int,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.principal = principal
        self.quota = quota
        self.limit = limit
        self.used = used
        self.requested = requested
        self.errno = _ERRNO.get(quota)
        self.retry_after = retry_after


def _raise_over(principal: str, kind: str, used: int, amount: int, limit: int) -> None:
    raise QuotaExceeded(
        f"{principal} is over its {kind} quota: {used:,} in use, {amount:,} more asked, "
        f"limit {limit:,}; {_ADVICE[kind]}, or ask the operator to raise quotas.{kind} for "
        f"{principal} in kqd's policy",
        principal=principal,
        quota=kind,
        limit=limit,
        used=used,
        requested=amount,
    )


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; return the soft limit now in
    force. A failure (a hard limit the kernel refuses) keeps the old soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %s to %s: %s", soft, hard, exc)
    return soft


def _soft_nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # RLIM_INFINITY cannot happen for NOFILE on Linux (nr_open bounds it); be safe anyway.
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


class DescriptorBudget:
    """The descriptors the daemon may open for callers, all principals together.

    *total* is the daemon's RLIMIT_NOFILE soft limit (read now when None); *reserve*
    descriptors (default ``max(64, 5% of total)``) are the daemon's own and never given to a
    caller; of the rest, ``shareable``, one principal may hold at most *principal_share*.
    Not thread-safe by itself: :class:`Accounts` calls it under its lock.
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        reserve: int | None = None,
        principal_share: float = PRINCIPAL_SHARE,
    ) -> None:
        self.total = _soft_nofile() if total is None else total
        if reserve is None:
            reserve = max(MIN_RESERVE, int(self.total * RESERVE_FRACTION))
        if not 0 < principal_share <= 1:
            raise ValueError(f"principal_share {principal_share} is not in (0, 1]")
        self.reserve = reserve
        self.shareable = max(0, self.total - reserve)
        self.per_principal = int(self.shareable * principal_share)
        self.used = 0

    def _explain(self) -> str:
        return (
            f"the daemon gives callers {self.shareable:,} descriptors (RLIMIT_NOFILE "
            f"{self.total:,}, {self.reserve:,} kept for itself), at most {self.per_principal:,} "
            "to one principal"
        )

    def check(self, principal: str, held: int, amount: int) -> None:
        """Refuse *amount* more for *principal*, who holds *held* of this budget already."""
        if held + amount > self.per_principal:
            raise QuotaExceeded(
                f"{principal} holds {held:,} of the daemon's descriptors and asks {amount:,} "
                f"more; {self._explain()}: close descriptors or queues you no longer need, or "
                "ask the operator to raise kqd's RLIMIT_NOFILE",
                principal=principal,
                quota="daemon descriptors",
                limit=self.per_principal,
                used=held,
                requested=amount,
            )
        if self.used + amount > self.shareable:
            raise QuotaExceeded(
                f"the daemon is out of descriptors for callers: {self.used:,} in use, "
                f"{amount:,} more asked by {principal}; {self._explain()}: close descriptors "
                "or queues you no longer need, retry later, or ask the operator to raise "
                "kqd's RLIMIT_NOFILE",
                principal=principal,
                quota="daemon descriptors",
                limit=self.shareable,
                used=self.used,
                requested=amount,
            )


class Usage:
    """What one principal holds, and its change rate. Made by :meth:`Accounts.usage`.

    Charges that fail change nothing. Thread-safe (one lock for all principals and the
    descriptor budget: a charge is a few comparisons, so one lock never waits long).
    """

    def __init__(self, name: str, accounts: Accounts) -> None:
        self.name = name
        self._accounts = accounts
        self._lock = accounts.lock
        self._used: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._daemon_fds = 0  # this principal's share of the descriptor budget
        self._tokens: float | None = None  # None: a full bucket, set at the first take
        self._stamp = 0.0

    def __repr__(self) -> str:
        held = ", ".join(f"{k}={v}" for k, v in self._used.items() if v)
        return f"<Usage {self.name} {held or 'idle'}>"

    def used(self, kind: Kind) -> int:
        """How much of *kind* is charged now."""
        return self._used[kind]

    @property
    def daemon_fds(self) -> int:
        """This principal's descriptors in the daemon's budget (descriptors + daemon fds)."""
        return self._daemon_fds

    def snapshot(self) -> dict[str, int]:
        """Every counter, for logs and tests."""
        with self._lock:
            return {**self._used, "daemon_fds": self._daemon_fds}

    def charge(self, kind: Kind, amount: int, limit: int) -> None:
        """Charge *amount* of *kind* against *limit*, or raise QuotaExceeded and charge
        nothing. "descriptors" is also charged to the daemon's descriptor budget."""
        if kind not in self._used:
            raise ValueError(f"unknown quota kind {kind!r}; one of {', '.join(KINDS)}")
        if amount < 0:
            raise ValueError(f"cannot charge a negative amount ({amount}); use release()")
        with self._lock:
            used = self._used[kind]
            if used + amount > limit:
                _raise_over(self.name, kind, used, amount, limit)
            if kind == "descriptors":
                budget = self._accounts.budget
                budget.check(self.name, self._daemon_fds, amount)
                budget.used += amount
                self._daemon_fds += amount
            self._used[kind] = used + amount

    def release(self, kind: Kind, amount: int) -> None:
        """Give back *amount* of *kind*. Giving back more than is charged is a bug in the
        caller: it is logged and the counter stops at 0 (a daemon keeps serving)."""
        if amount < 0:
            raise ValueError(f"cannot release a negative amount ({amount})")
        with self._lock:
            used = self._used[kind]
            if amount > used:
                log.error("%s: released %d %s but only %d charged", self.name, amount, kind, used)
                amount = used
            self._used[kind] = used - amount
            if kind == "descriptors":
                self._give_back_fds(amount)

    def charge_daemon_fds(self, amount: int) -> None:
        """Charge descriptors the daemon opens for this principal outside its table (a
        queue's own, a PROC knote's pidfd) to the descriptor budget alone."""
        if amount < 0:
            raise ValueError(f"cannot charge a negative amount ({amount}); use release()")
        with self._lock:
            budget = self._accounts.budget
            budget.check(self.name, self._daemon_fds, amount)
            budget.used += amount
            self._daemon_fds += amount

    def release_daemon_fds(self, amount: int) -> None:
        """Give back what :meth:`charge_daemon_fds` charged."""
        if amount < 0:
            raise ValueError(f"cannot release a negative amount ({amount})")
        with self._lock:
            self._give_back_fds(amount)

    def _give_back_fds(self, amount: int) -> None:
        if amount > self._daemon_fds:
            log.error(
                "%s: released %d daemon descriptors but holds %d",
                self.name,
                amount,
                self._daemon_fds,
            )
            amount = self._daemon_fds
        self._daemon_fds -= amount
        budget = self._accounts.budget
        budget.used = max(0, budget.used - amount)

    @contextmanager
    def hold(self, kind: Kind, amount: int, limit: int) -> Iterator[None]:
        """Charge *amount* of *kind* for a block: released again if the block raises, kept
        if it completes (then the caller owns the charge and releases it later)."""
        self.charge(kind, amount, limit)
        try:
            yield
        except BaseException:
            self.release(kind, amount)
            raise

    @contextmanager
    def borrow(self, kind: Kind, amount: int, limit: int) -> Iterator[None]:
        """Charge *amount* of *kind* for exactly the block's duration (a Wait stream):
        released when the block ends, however it ends."""
        self.charge(kind, amount, limit)
        try:
            yield
        finally:
            self.release(kind, amount)

    def bill(self) -> Bill:
        """A new :class:`Bill` on this principal (use it as a context manager)."""
        return Bill(self)

    def take_changes(self, count: int, per_second: int) -> None:
        """Take *count* changes from the token bucket (rate *per_second*, burst one second's
        worth), or raise QuotaExceeded and take none. Taken changes are never given back: the
        rate counts what was asked, whether or not it succeeded."""
        if count <= 0:
            return
        with self._lock:
            now = self._accounts.clock()
            capacity = float(per_second)
            if self._tokens is None:
                tokens = capacity
            else:
                tokens = min(capacity, self._tokens + (now - self._stamp) * per_second)
            self._stamp = now
            self._tokens = tokens
            if count <= tokens:
                self._tokens = tokens - count
                return
        available = int(tokens)
        if count > per_second:
            what = (
                f"one call with {count:,} changes is over {self.name}'s changes_per_second "
                f"quota ({per_second:,}): send at most {per_second:,} changes per call"
            )
            retry_after = None
        else:
            retry_after = (count - tokens) / per_second
            what = (
                f"{self.name} is over its changes_per_second quota: limit {per_second:,} per "
                f"second, {available:,} available now, {count:,} asked; retry in "
                f"{retry_after:.3f} s or send changes at a slower rate"
            )
        raise QuotaExceeded(
            f"{what}, or ask the operator to raise quotas.changes_per_second for {self.name} "
            "in kqd's policy",
            principal=self.name,
            quota="changes_per_second",
            limit=per_second,
            used=per_second - available,
            requested=count,
            retry_after=retry_after,
        )

    def check_timer_period(self, period_ns: int, min_period_ms: int) -> None:
        """Refuse a TIMER period shorter than *min_period_ms* (0: any period is fine)."""
        if period_ns < min_period_ms * 1_000_000:
            raise QuotaExceeded(
                f"a timer period of {period_ns / 1e6:g} ms is below {self.name}'s "
                f"min_timer_period_ms quota ({min_period_ms} ms): use a longer period, or ask "
                f"the operator to lower quotas.min_timer_period_ms for {self.name} in kqd's "
                "policy",
                principal=self.name,
                quota="min_timer_period_ms",
                limit=min_period_ms,
                used=0,
                requested=period_ns // 1_000_000,
            )


class Bill:
    """Charges to one principal that stand or fall together: charge, then commit or roll back.

    As a context manager, the block's normal end commits and an exception rolls back. After a
    commit the charges belong to the caller (release them when the resources go); after a
    rollback they are gone. Either may be called once; a Bill is for one operation.
    """

    def __init__(self, usage: Usage) -> None:
        self._usage = usage
        self._charges: list[tuple[Kind | None, int]] = []  # None: daemon descriptors alone
        self._open = True

    def charge(self, kind: Kind, amount: int, limit: int) -> None:
        """Charge *amount* of *kind* (see :meth:`Usage.charge`); on QuotaExceeded nothing of
        this charge is taken, and the earlier ones stay on the bill until its end."""
        self._check_open()
        self._usage.charge(kind, amount, limit)
        self._charges.append((kind, amount))

    def charge_daemon_fds(self, amount: int) -> None:
        """See :meth:`Usage.charge_daemon_fds`."""
        self._check_open()
        self._usage.charge_daemon_fds(amount)
        self._charges.append((None, amount))

    def commit(self) -> None:
        """Keep every charge: the caller now owns them."""
        self._check_open()
        self._open = False
        self._charges.clear()

    def rollback(self) -> None:
        """Undo every charge made on this bill, newest first."""
        self._check_open()
        self._open = False
        while self._charges:
            kind, amount = self._charges.pop()
            if kind is None:
                self._usage.release_daemon_fds(amount)
            else:
                self._usage.release(kind, amount)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("this bill is already committed or rolled back")

    def __enter__(self) -> Bill:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._open:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()


class Accounts:
    """Every principal's :class:`Usage`, and the daemon's descriptor budget.

    *clock* (monotonic seconds) drives the change buckets; tests pass a fake one. A Usage is
    kept for the daemon's life once made (a few hundred bytes per principal name): never
    forgetting one means a reference held anywhere in the service always counts against the
    same limits.
    """

    def __init__(
        self,
        budget: DescriptorBudget | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = DescriptorBudget() if budget is None else budget
        self.clock = clock
        self.lock = threading.Lock()
        self._usages: dict[str, Usage] = {}

    def usage(self, name: str) -> Usage:
        """The Usage of principal *name*, made on first use."""
        usage = self._usages.get(name)
        if usage is None:
            with self.lock:
                usage = self._usages.setdefault(name, Usage(name, self))
        return usage

    def __iter__(self) -> Iterator[Usage]:
        return iter(list(self._usages.values()))
