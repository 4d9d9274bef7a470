"""Which knotes a principal may hold: the filters its policy allows, the processes it can see,
and its quotas (knotes, timers, udata bytes, descriptors).

A KnoteAdmission sits in each remote queue's core kqueue (``Kqueue.admission``), the place where
FreeBSD's kqueue makes its own registration-time checks (``p_cansee`` for PROC, the per-uid knote
and callout counts). So a refused change is an EV_ERROR entry with an errno at its place in the
changelist, like any other failed change: EPERM for a filter the policy does not allow (SIGNAL is
never allowed over the wire: the daemon's signals are not the caller's), ESRCH for a process the
caller cannot see, EINVAL for a timer period under the policy's minimum, and the quota's errno
(ENOMEM, EMFILE, ...) when a quota is full; the daemon's log says which quota. Every knote that
goes gives its charges back, however it goes, so the counts never drift.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import NoReturn

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_KEEPUDATA,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_FILTER_TIMER,
    KQ_FILTER_VNODE,
    KQ_NOTE_ABSTIME,
    kevent,
)
from kqd.core.constants import FILTER_NAMES
from kqd.core.linux.knote import Knote
from kqd.core.linux.timer import interval_ns
from kqd.daemon.policy import Rules
from kqd.daemon.quotas import Bill, Kind, QuotaExceeded, Usage

log = logging.getLogger("kqd.daemon")
audit = logging.getLogger("kqd.audit")

# Filters whose knotes hold a descriptor of the daemon's: a pidfd, a duplicate of the file.
_HOLDS_A_DESCRIPTOR = (KQ_FILTER_PROC, KQ_FILTER_VNODE)


@functools.cache
def _hidepid() -> bool:
    """Is /proc mounted with hidepid (users see only their own processes)?"""
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[4] == "/proc":
                options = line.split(" - ", 1)[1].split()[-1].split(",")
                return any(o.startswith("hidepid=") and o not in ("hidepid=0", "hidepid=off")
                           for o in options)  # fmt: skip
    return False


class KnoteAdmission:
    """The core's Admission for one queue of one principal (see the module docstring)."""

    def __init__(self, principal: str, rules: Callable[[], Rules], usage: Usage) -> None:
        self.principal = principal
        self.rules = rules  # the principal's rules now (the policy may be reloaded)
        self.usage = usage
        self._batch_rules: Rules | None = None  # inside batch(): looked up once
        # What this queue's knotes hold of each quota, so that settle() gives it all back at
        # once; "daemon fds" is the descriptors its PROC and VNODE knotes hold.
        self.held: dict[Kind, int] = {"knotes": 0, "udata_bytes": 0, "timers": 0}
        self.settled = False

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Changes applied together, in one turn of the event loop: the principal's rules are
        looked up once for all of them rather than once per change (the look-up was a fifth
        of a bulk registration's time). The same outcome: a policy reload (SIGHUP) is a turn
        of the loop of its own, so it never falls between two changes of a batch."""
        self._batch_rules = self.rules()
        try:
            yield
        finally:
            self._batch_rules = None

    def admit(self, change: kevent, existing: Knote | None) -> None:
        rules = self._batch_rules if self._batch_rules is not None else self.rules()
        held = self.held
        try:
            if change.flags & KQ_EV_ADD and change.filter == KQ_FILTER_TIMER:
                self._check_period(rules, change, existing)
            if existing is None:
                self._check_new(rules, change)
                with self.usage.bill() as bill:
                    self._charge(bill, rules, change)
                held["knotes"] += 1
                held["udata_bytes"] += len(change.udata)
                if change.filter == KQ_FILTER_TIMER:
                    held["timers"] += 1
            elif not change.flags & KQ_EV_KEEPUDATA:
                grown = len(change.udata) - len(existing.udata)
                if grown > 0:
                    self.usage.charge("udata_bytes", grown, rules.quotas.udata_bytes)
                elif grown < 0:
                    self.usage.release("udata_bytes", -grown)
                held["udata_bytes"] += grown
        except QuotaExceeded as exc:
            log.info("%s", exc)
            raise OSError(exc.errno or errno.ENOMEM, str(exc)) from None

    def released(self, kn: Knote) -> None:
        usage = self.usage
        if kn.filter in _HOLDS_A_DESCRIPTOR:
            usage.release_daemon_fds(1)  # when the descriptor is closed, settled or not
        if self.settled:
            return
        held = self.held
        held["knotes"] -= 1
        held["udata_bytes"] -= len(kn.udata)
        usage.release("knotes", 1)
        usage.release("udata_bytes", len(kn.udata))
        if kn.filter == KQ_FILTER_TIMER:
            held["timers"] -= 1
            usage.release("timers", 1)

    def settle(self) -> None:
        """The queue is closed: give back at once every knote, timer and udata byte its
        knotes hold, before they are dropped (a queue of many knotes drops them over several
        turns of the loop). Their daemon descriptors are given back as each is closed."""
        if self.settled:
            return
        self.settled = True
        for kind, amount in self.held.items():
            if amount:
                self.usage.release(kind, amount)

    def _check_new(self, rules: Rules, change: kevent) -> None:
        if not rules.filter_allowed(change.filter):
            self._refuse(errno.EPERM, change, "the policy allows no such knotes")
        if change.filter == KQ_FILTER_PROC and _hidepid() and not self._sees(rules, change.ident):
            self._refuse(errno.ESRCH, change, "a process it cannot see")

    def _refuse(self, code: int, change: kevent, why: str) -> NoReturn:
        filter_name = FILTER_NAMES.get(change.filter, str(change.filter))
        audit.info("%s %s knote %d: denied (%s)", self.principal, filter_name, change.ident, why)
        raise OSError(code, why)

    @staticmethod
    def _sees(rules: Rules, pid: int) -> bool:
        """Under hidepid, a caller sees its own processes (root sees all)."""
        if rules.identity is None:
            return False
        try:
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return True  # no such process: the filter answers ESRCH itself
        return rules.identity.uid in (0, owner)

    def _check_period(self, rules: Rules, change: kevent, existing: Knote | None) -> None:
        oneshot = (existing.flags if existing is not None else change.flags) & KQ_EV_ONESHOT
        if not oneshot and not change.fflags & KQ_NOTE_ABSTIME:
            period = interval_ns(change.flags, change.fflags, change.data)
            self.usage.check_timer_period(period, rules.quotas.min_timer_period_ms)

    @staticmethod
    def _charge(bill: Bill, rules: Rules, change: kevent) -> None:
        limits = rules.quotas
        bill.charge("knotes", 1, limits.knotes)
        bill.charge("udata_bytes", len(change.udata), limits.udata_bytes)
        if change.filter == KQ_FILTER_TIMER:
            bill.charge("timers", 1, limits.timers)
        if change.filter in _HOLDS_A_DESCRIPTOR:
            bill.charge_daemon_fds(1)
