"""Leaving a stream ends its call on the daemon: closing the generator, breaking out of the loop
(asyncio and sync clients). A call left open would keep a Wait stream, and the daemon's work
filling it, alive for nobody."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import kqclient
import pytest
from kqclient import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_USER, KQ_NOTE_TRIGGER, aio, kevent

from kqd.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import WAIT_BOUND, Daemon, start_daemon

POLL = 0.01  # seconds between two looks at the daemon's count of open streams
FIRE = [kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of this test's own: its count of open streams is this test's streams only."""
    started = start_daemon(tmp_path)
    yield started
    assert started.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"


def open_streams(target: str) -> int:
    """The daemon's Wait/Session streams open now (admin GetStats; this test runs as root, a
    privileged caller)."""
    with grpc.insecure_channel(target) as channel:
        stats = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
            admin_pb2.GetStatsRequest(), timeout=WAIT_BOUND
        )
    return int(stats.wait_streams)


def streams_after(target: str, expected: int) -> int:
    """The count of open streams once it is *expected*, or its last value after WAIT_BOUND."""
    deadline = time.monotonic() + WAIT_BOUND
    while (count := open_streams(target)) != expected and time.monotonic() < deadline:
        time.sleep(POLL)
    return count


async def streams_after_async(target: str, expected: int) -> int:
    """streams_after() from a coroutine: the event loop runs between two looks (an abandoned
    async generator is closed by a task of the loop)."""
    deadline = time.monotonic() + WAIT_BOUND
    while (count := open_streams(target)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    return count


def test_aclose_cancels_the_wait_call(daemon: Daemon) -> None:
    async def main() -> None:
        async with aio.connect(daemon.target) as client:
            kq = await client.kqueue()
            await kq.control(FIRE, 0)
            events = kq.stream()
            assert (await events.__anext__()).ident == 1
            assert await streams_after_async(daemon.target, 1) == 1
            await events.aclose()
            left = await streams_after_async(daemon.target, 0)
            assert left == 0, f"the Wait call still runs {WAIT_BOUND}s after aclose()"

    asyncio.run(main())


@pytest.mark.parametrize("batches", [False, True], ids=["stream", "stream_batches"])
def test_break_out_of_async_for_cancels_the_wait_call(daemon: Daemon, batches: bool) -> None:
    async def main() -> None:
        async with aio.connect(daemon.target) as client:
            kq = await client.kqueue()
            await kq.control(FIRE, 0)
            async for _ in kq.stream_batches() if batches else kq.stream():
                assert await streams_after_async(daemon.target, 1) == 1
                break
            left = await streams_after_async(daemon.target, 0)
            assert left == 0, f"the Wait call still runs {WAIT_BOUND}s after the loop"

    asyncio.run(main())


def test_closing_a_sync_stream_cancels_its_call(daemon: Daemon) -> None:
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        kq.control(FIRE, 0)
        events = kq.stream()
        assert next(events).ident == 1
        assert streams_after(daemon.target, 1) == 1
        events.close()
        left = streams_after(daemon.target, 0)
        assert left == 0, f"the stream's call still runs {WAIT_BOUND}s after close()"


def test_break_out_of_a_sync_stream_cancels_its_call(daemon: Daemon) -> None:
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        kq.control(FIRE, 0)
        for _ in kq.stream():
            assert streams_after(daemon.target, 1) == 1
            break
        left = streams_after(daemon.target, 0)
        assert left == 0, f"the stream's call still runs {WAIT_BOUND}s after the loop"
