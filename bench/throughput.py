"""Streaming throughput: events per second to one stream, to 100 streams, and in process.

The daemon keeps state, as ``kqd serve`` does by default (every batch is committed to its
SQLite log before it is sent); one row repeats the single stream on a daemon with --no-state.
Every queue's source is 1000 level-triggered USER knotes triggered once: each is reported at
every retrieval, so it never runs dry and the rate is the delivery path's alone. Each of the 100
streams has a source of its own as large as the single stream's, so messages are as full; the
window opens once every stream has received a first message, and the table also says how many of
the 100 streams received anything in it (the others were starved).
"""

from __future__ import annotations

import asyncio
import time

from kqclient import aio

from bench.daemon import running_daemon
from bench.session import Session
from bench.stats import Cell, Table
from kqd.core import KQ_EV_ADD, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent, kqueue

SOURCES = 1000
START_BOUND = 10.0  # seconds for every stream to be running before the window opens


def _always_ready(count: int) -> list[kevent]:
    return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(count)]


def core_rate(seconds: float) -> float:
    with kqueue() as kq:
        kq.control(_always_ready(SOURCES), 0)
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            count += len(kq.control(None, 1024, 0.1))
        return count / seconds


async def remote_rate(target: str, streams: int, seconds: float) -> tuple[float, int]:
    """Events received as kevent objects, a message at a time (stream_batches), by all the
    streams together over *seconds* from the first message; and how many streams got any."""
    received = [0] * streams

    async def receive(index: int, kq: aio.RemoteKqueue) -> None:
        async for batch in kq.stream_batches(max_batch=1024):
            received[index] += len(batch)

    async with aio.connect(target) as client:
        queues = [await client.kqueue() for _ in range(streams)]
        for kq in queues:
            await kq.control(_always_ready(SOURCES), 0)
        tasks = [asyncio.create_task(receive(i, kq)) for i, kq in enumerate(queues)]
        # The window opens once every stream is running (has received something), or after
        # START_BOUND: a stream still being opened is not a starved one.
        started = time.monotonic()
        while not all(received) and time.monotonic() - started < START_BOUND:
            await asyncio.sleep(0.01)
        start, before = time.monotonic(), list(received)
        await asyncio.sleep(seconds)
        after = list(received)
        rate = (sum(after) - sum(before)) / (time.monotonic() - start)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # The cancelled streams ended their calls; the queues are closed on a fresh connection.
    async with aio.connect(target) as client:
        for kq in queues:
            await (await client.kqueue(kq.queue_id)).close()
    return rate, sum(1 for b, a in zip(before, after, strict=True) if a > b)


CORE = "kqd core in process (the ceiling)"
ONE = "kqd remote, 1 stream"
ONE_NO_STATE = "kqd remote, 1 stream, daemon with --no-state"
HUNDRED = "kqd remote, 100 streams (aggregate)"
SERVED = "100 streams: how many got events in the window (a count)"


def measure(session: Session) -> list[Table]:
    seconds = 1.0 if session.quick else 3.0
    one, _ = asyncio.run(remote_rate(session.target, 1, seconds))
    with running_daemon(durable=False) as stateless:
        one_no_state, _ = asyncio.run(remote_rate(stateless.target, 1, seconds))
    hundred, served = asyncio.run(remote_rate(session.target, 100, seconds))
    rows: dict[str, list[Cell] | str] = {
        CORE: [core_rate(seconds)],
        ONE: [one],
        ONE_NO_STATE: [one_no_state],
        HUNDRED: [hundred],
        SERVED: [served],
    }
    title = "Streaming throughput (events/s)"
    return [Table("throughput", title, ["stream", "events/s"], rows, fmt="{:,.0f}")]
