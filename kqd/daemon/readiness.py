"""Waiting in the event loop until a kqueue has something to say.

The loop watches a queue's ``fileno()`` only while some call is waiting on it, and stops at the
first wake-up: a queue whose events nobody collects would otherwise keep its descriptor readable
and spin the loop. The reader is removed only by the Readiness that added it: once a queue is
closed its descriptor number may belong to another queue's kqueue, whose reader must stay.
"""

from __future__ import annotations

import asyncio


class Readiness:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reading = False
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, timeout: float | None) -> None:
        """Return when the descriptor polls readable, after *timeout* seconds, or at ``wake()``."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._reading:
            loop.add_reader(self._fd, self.wake)
            self._reading = True
        self._waiters.add(waiter)
        # A plain future and a timer, not wait_for(shield(...)): those cost a task and about
        # three loop turns between the wake-up and the waiter running (~0.1 ms per event).
        timer = None if timeout is None else loop.call_later(timeout, _resolve, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiters.discard(waiter)
            if not self._waiters:
                self._stop_reading()

    def wake(self) -> None:
        """Resolve every waiter (the descriptor is readable, something changed, or the queue is
        closing). Call it before the descriptor is closed."""
        self._stop_reading()
        for waiter in self._waiters:
            _resolve(waiter)
        self._waiters.clear()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._fd)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
