"""What Wait streams deliver, counted where it happens, cheaply: the hooks of the hot path.

The daemon's metrics are read at scrape time from its state (queues, knotes, descriptors; see
``metrics.py``), except what leaves no state behind: events sent, how long they took, streams
closed for being stuck. Those are counted here, by hooks in ``RemoteQueue.next_batch`` and in
the Wait stream's sending loop, into plain integers and a plain :class:`Histogram`: no locks and
no label lookups, since every hook, every scrape and every admin call runs on the daemon's event
loop thread.

Cost. The hooks work per *batch* (up to 512 events), not per event, except for one pass in C
over the batch to count its events by filter; with :attr:`DeliveryMetrics.enabled` False (no
``--metrics-listen``) each hook returns at once. The latency of an event runs from the moment
``next_batch`` collected it from the core (one monotonic timestamp per collection, kept per
queue for as many collections as the delivery log can hold events) to the moment its stream's
write completed; an event sent on two streams, or again after a resume, is observed each time,
so the histogram's count is the number of events sent.

Open Wait streams are counted per queue whether or not metrics are on (``streaming()``, once
per stream): the admin service lists them.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

from kqd.core.kevent import kevent
from kqd.daemon.delivery_log import CAPACITY

if TYPE_CHECKING:
    from kqd.daemon.remote_queue import RemoteQueue

#: Upper bounds (seconds) of the delivery latency buckets: 50 us to 10 s.
LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_FILTER = attrgetter("filter")
_EVENT = itemgetter(1)


class Histogram:
    """A Prometheus histogram kept as plain numbers: one count per bucket (not cumulative),
    the sum and the count. Not thread-safe: one thread updates and reads it."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, count: int = 1) -> None:
        """*count* observations of *value* (a batch whose events all waited as long)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count
        self.sum += value * count
        self.count += count

    def cumulative(self) -> list[tuple[float, int]]:
        """``[(le, observations <= le), ..., (inf, count)]``, as exposition wants them."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class DeliveryMetrics:
    """Events sent by Wait streams (by filter), their delivery latency, stuck streams closed,
    and the Wait streams open on each queue. One per daemon: :data:`delivery`."""

    def __init__(self) -> None:
        self.enabled = False
        self.sent_by_filter: Counter[int] = Counter()
        self.latency = Histogram(LATENCY_BUCKETS)
        self.stuck_closed = 0
        # Per queue: (first sequence, CLOCK_MONOTONIC ns) of each collection from the core.
        self._collections: weakref.WeakKeyDictionary[RemoteQueue, deque[tuple[int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        self._streams: Counter[RemoteQueue] = Counter()

    def collected(self, queue: RemoteQueue, count: int) -> None:
        """Hook: *queue*'s log just numbered *count* events fresh from the core."""
        if not self.enabled:
            return
        stamps = self._collections.get(queue)
        if stamps is None:
            # The log keeps at most CAPACITY events, so at most that many collections matter.
            stamps = self._collections[queue] = deque(maxlen=CAPACITY)
        stamps.append((queue.log.last_sequence - count + 1, time.monotonic_ns()))

    def sent(self, queue: RemoteQueue, items: list[tuple[int, kevent]]) -> None:
        """Hook: a Wait stream of *queue* has written *items* (sequence, event) to its client."""
        if not self.enabled or not items:
            return
        now = time.monotonic_ns()
        self.sent_by_filter.update(map(_FILTER, map(_EVENT, items)))
        stamps = self._collections.get(queue, ())
        first, last = items[0][0], items[-1][0]
        # Walk back from the newest collection: the batch is usually the one just collected.
        end = last
        for start, stamp in reversed(stamps):
            if start <= end:
                low = max(start, first)
                self.latency.observe((now - stamp) / 1e9, end - low + 1)
                end = low - 1
                if end < first:
                    break

    def stuck(self) -> None:
        """Hook: a Wait stream was closed because its reader read nothing for too long."""
        self.stuck_closed += 1

    @contextlib.contextmanager
    def streaming(self, queue: RemoteQueue) -> Iterator[None]:
        """Count one Wait stream on *queue* for the duration of the block."""
        self._streams[queue] += 1
        try:
            yield
        finally:
            self._streams[queue] -= 1
            if not self._streams[queue]:
                del self._streams[queue]

    def streams_of(self, queue: RemoteQueue) -> int:
        """The Wait streams open on *queue* now."""
        return self._streams.get(queue, 0)


#: The daemon's one DeliveryMetrics; ``kqd serve --metrics-listen`` enables its counting.
delivery = DeliveryMetrics()
