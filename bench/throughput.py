"""Streaming throughput: events per second to one stream, to 100 streams, and in process.

The source is 1000 level-triggered USER knotes triggered once: each is reported at every
retrieval, so it never runs dry and the rate is the delivery path's alone.
"""

from __future__ import annotations

import asyncio
import time

from kqclient import aio

from bench.session import Session
from kqd.core import KQ_EV_ADD, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent, kqueue

SOURCES = 1000


def _always_ready(count: int) -> list[kevent]:
    return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(count)]


def core_rate(seconds: float) -> float:
    with kqueue() as kq:
        kq.control(_always_ready(SOURCES), 0)
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            count += len(kq.control(None, 1024, 0.1))
        return count / seconds


async def _count(kq: aio.RemoteKqueue, seconds: float) -> int:
    """Events received as kevent objects, a message at a time (stream_batches)."""
    count = 0
    end = time.monotonic() + seconds
    async for batch in kq.stream_batches(max_batch=1024):
        count += len(batch)
        if time.monotonic() >= end:
            break
    return count


async def remote_rate(target: str, streams: int, seconds: float) -> float:
    async with aio.connect(target) as client:
        queues = [await client.kqueue() for _ in range(streams)]
        for kq in queues:
            await kq.control(_always_ready(SOURCES // streams), 0)
        start = time.monotonic()
        counts = await asyncio.gather(*(_count(kq, seconds) for kq in queues))
        elapsed = time.monotonic() - start
        for kq in queues:
            await kq.close()
        return sum(counts) / elapsed


def measure(session: Session) -> list[tuple[str, float]]:
    seconds = 1.0 if session.quick else 3.0
    return [
        ("kqd core in process (the ceiling)", core_rate(seconds)),
        ("kqd remote, 1 stream", asyncio.run(remote_rate(session.target, 1, seconds))),
        ("kqd remote, 100 streams", asyncio.run(remote_rate(session.target, 100, seconds))),
    ]
