"""The filter registry: one line per filter (FreeBSD's sysfilt_ops)."""

from __future__ import annotations

from kqd.core.constants import (
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_SIGNAL,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
)
from kqd.core.linux.filter import Filter
from kqd.core.linux.proc import ProcFilter
from kqd.core.linux.read_write import ReadFilter, WriteFilter
from kqd.core.linux.signal_filter import SignalFilter
from kqd.core.linux.timer import TimerFilter
from kqd.core.linux.user import UserFilter
from kqd.core.linux.vnode import VnodeFilter

FILTERS: dict[int, type[Filter]] = {
    KQ_FILTER_READ: ReadFilter,
    KQ_FILTER_WRITE: WriteFilter,
    KQ_FILTER_VNODE: VnodeFilter,
    KQ_FILTER_PROC: ProcFilter,
    KQ_FILTER_SIGNAL: SignalFilter,
    KQ_FILTER_TIMER: TimerFilter,
    KQ_FILTER_USER: UserFilter,
}
