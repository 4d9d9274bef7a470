"""The knote: one registration of interest, identified by (ident, filter) within a kqueue."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kqd.core.kevent import kevent

if TYPE_CHECKING:
    from kqd.core.linux.filter import Filter


@dataclass(eq=False, slots=True)
class Knote:
    """Mirrors FreeBSD's ``struct knote``.

    ``flags`` are the kevent flags kept from registration (ONESHOT, CLEAR, DISPATCH, RECEIPT) plus
    the ones a filter sets (EOF); ``sfflags``/``sdata`` are what the user registered,
    ``fflags``/``data`` what will be reported. ``active`` means the filter's condition holds,
    ``queued`` that the knote sits in the kqueue's active queue (never while disabled).
    Instances hash by identity so the active queue can hold them.
    """

    ident: int
    filter: int
    flags: int
    sfflags: int
    sdata: int
    udata: bytes
    fop: Filter
    fflags: int = 0
    data: int = 0
    active: bool = False
    queued: bool = False
    disabled: bool = False
    dropped: bool = False
    # Delivered and dropped without a report (FreeBSD's EV_DROP: a process exited and the
    # knote asked for nothing that happened).
    drop_unreported: bool = False
    # Not in the kqueue's (ident, filter) table: NOTE_CHILD notices (see ProcFilter).
    anonymous: bool = False
    hook: Any = field(default=None)

    @property
    def key(self) -> tuple[int, int]:
        return (self.ident, self.filter)


@dataclass(frozen=True)
class KnoteSnapshot:
    """A knote's definition and state, enough to re-create it in another kqueue, even in another
    process after a restart (``Kqueue.snapshot``/``Kqueue.restore``).

    ``change`` holds what the knote keeps: ident, filter, its flags as they are now (the kept
    ONESHOT/CLEAR/DISPATCH/RECEIPT..., the CLEAR a filter adds, EV_EOF once a filter saw the end),
    the registered note mask (``sfflags``) as fflags, ``sdata`` as data, and udata. ``disabled``
    is EV_DISABLE's state, which is also where EV_DISPATCH leaves a delivered knote. ``state`` is
    what the filter needs to resume (``Filter.snapshot``): only ints, strings, bools and None,
    so that it serializes as JSON.
    """

    change: kevent
    disabled: bool
    state: dict[str, Any]
