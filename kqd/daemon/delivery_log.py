"""The events a queue delivered, by sequence number, kept so a broken stream can resume.

Bounded twice: by count and by bytes (udata may be up to 64 KiB per event), so a queue's memory
stays bounded whatever its clients do. A resume point that fell out of the log is an error that
names the oldest sequence still kept: never a silent gap.
"""

from __future__ import annotations

from collections import deque

from kqd.core import kevent

CAPACITY = 4096
MAX_BYTES = 8 * 1024 * 1024
_EVENT_OVERHEAD = 64  # bytes per kept event besides its udata, roughly


class ResumeTooOldError(Exception):
    """The resume point is older than the log: events in between are gone."""

    def __init__(self, oldest: int) -> None:
        super().__init__(oldest)
        self.oldest = oldest


class DeliveryLog:
    def __init__(self, capacity: int = CAPACITY, max_bytes: int = MAX_BYTES) -> None:
        self._events: deque[tuple[int, kevent]] = deque()
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self.last_sequence = 0

    def record(self, events: list[kevent]) -> list[tuple[int, kevent]]:
        """Number *events* in delivery order and keep them; the numbered batch."""
        batch = []
        for ev in events:
            self.last_sequence += 1
            batch.append((self.last_sequence, ev))
        self._keep(batch)
        return batch

    @property
    def kept(self) -> tuple[int, int]:
        """How many events the log keeps, and their bytes (roughly: udata plus overhead)."""
        return len(self._events), self._bytes

    def restore(self, batch: list[tuple[int, kevent]], last_sequence: int) -> None:
        """Take back what a previous daemon delivered (from the state store)."""
        self._keep(batch)
        self.last_sequence = last_sequence

    def _keep(self, batch: list[tuple[int, kevent]]) -> None:
        self._events.extend(batch)
        self._bytes += sum(len(ev.udata) for _, ev in batch) + _EVENT_OVERHEAD * len(batch)
        while self._events and (
            len(self._events) > self._capacity or self._bytes > self._max_bytes
        ):
            _, old = self._events.popleft()
            self._bytes -= len(old.udata) + _EVENT_OVERHEAD

    def after(self, sequence: int, limit: int) -> list[tuple[int, kevent]]:
        """Up to *limit* kept events after *sequence*; ResumeTooOldError if some are gone."""
        oldest = self._events[0][0] if self._events else self.last_sequence + 1
        if sequence + 1 < oldest:
            raise ResumeTooOldError(oldest)
        skip = sequence + 1 - oldest
        return [self._events[i] for i in range(skip, min(len(self._events), skip + limit))]
