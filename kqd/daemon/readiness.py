"""Waiting in the event loop until a kqueue has something to say.

The loop watches a queue's ``fileno()`` only while some call is waiting on it, and stops at the
first wake-up: a queue whose events nobody collects would otherwise keep its descriptor readable
and spin the loop.
"""

from __future__ import annotations

import asyncio


class Readiness:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, timeout: float | None) -> None:
        """Return when the descriptor polls readable, or after *timeout* seconds."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            loop.add_reader(self._fd, self.wake)
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)
            if not self._waiters:
                loop.remove_reader(self._fd)

    def wake(self) -> None:
        """Resolve every waiter (the descriptor is readable, or the daemon is stopping)."""
        asyncio.get_running_loop().remove_reader(self._fd)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
