"""Remote kqd next to the in-process core: notification latency, streaming throughput.

Latency is measured from the moment the benchmark makes something happen (a byte that lets a
child ``head -c 1`` exit; a write to a file) to the moment the waiter holds the event, for: the
kernel primitive in process (the floor), the kqd core in process, and a Wait stream from a real
``kqd serve`` over a Unix socket. Throughput counts events per second delivered from 1000
always-ready knotes (level-triggered USER knotes) to one stream, to 100 streams at once, and to
the in-process core. Everything runs in one go on the same machine, so the rows compare.
"""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import inotify_simple
import kqclient
from kqclient import aio

from bench.daemon import running_daemon
from bench.stats import summary_ms, table
from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_NOTE_EXIT,
    KQ_NOTE_TRIGGER,
    KQ_NOTE_WRITE,
    kevent,
    kqueue,
)
from kqd.v1 import kqd_pb2

Trial = Callable[[], int]  # one measurement, in ns


def _exit_child() -> subprocess.Popen:
    """A child that exits as soon as one byte arrives on its stdin."""
    return subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


def _release(child: subprocess.Popen) -> int:
    assert child.stdin is not None
    start = time.perf_counter_ns()
    child.stdin.write(b"x")
    child.stdin.flush()
    return start


def exit_floor() -> int:
    child = _exit_child()
    pidfd = os.pidfd_open(child.pid)
    with select.epoll() as ep:
        ep.register(pidfd, select.EPOLLIN)
        start = _release(child)
        ep.poll(10)
        took = time.perf_counter_ns() - start
    os.close(pidfd)
    child.wait()
    return took


def exit_core(kq) -> int:
    child = _exit_child()
    kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
    start = _release(child)
    assert kq.control(None, 1, 10)
    took = time.perf_counter_ns() - start
    child.wait()
    return took


class RemoteStream:
    """A remote queue and an open Wait stream on it, read event by event."""

    def __init__(self, client: kqclient.Client) -> None:
        self.kq = client.kqueue()
        self._responses = client.stub.Wait(kqd_pb2.WaitRequest(queue_id=self.kq.queue_id))
        next(self._responses)  # the stream is established
        self._events: Iterator = iter(())

    def next_event(self) -> object:
        for item in self._events:
            return item
        while True:
            response = next(self._responses)
            if response.events:
                self._events = iter(response.events[1:])
                return response.events[0]


def exit_remote(stream: RemoteStream) -> int:
    child = _exit_child()
    stream.kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
    start = _release(child)
    stream.next_event()
    took = time.perf_counter_ns() - start
    child.wait()
    return took


def _write(fd: int) -> int:
    start = time.perf_counter_ns()
    os.write(fd, b"x")
    return start


def file_floor(path: Path, fd: int) -> Trial:
    notify = inotify_simple.INotify()
    notify.add_watch(str(path), inotify_simple.flags.MODIFY)

    def trial() -> int:
        start = _write(fd)
        notify.read(timeout=10_000)
        return time.perf_counter_ns() - start

    return trial


def file_core(kq, path: Path, fd: int) -> Trial:
    watched = os.open(path, os.O_RDONLY)
    kq.control([kevent(watched, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)

    def trial() -> int:
        start = _write(fd)
        assert kq.control(None, 1, 10)
        return time.perf_counter_ns() - start

    return trial


def file_remote(stream: RemoteStream, path: Path, fd: int) -> Trial:
    watched = stream.kq.open(str(path))
    stream.kq.control([kevent(watched, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)

    def trial() -> int:
        start = _write(fd)
        stream.next_event()
        return time.perf_counter_ns() - start

    return trial


def _always_ready(count: int) -> list[kevent]:
    """Level-triggered USER knotes, triggered once: each is reported at every retrieval, so
    the source never runs dry and the rate measured is the delivery path's alone."""
    return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(count)]


def throughput_core(seconds: float) -> float:
    with kqueue() as kq:
        kq.control(_always_ready(1000), 0)
        count, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            count += len(kq.control(None, 1024, 0.1))
        return count / seconds


async def _count_stream(kq: aio.RemoteKqueue, seconds: float) -> int:
    count = 0
    end = time.monotonic() + seconds
    async for _ in kq.stream(max_batch=1024):
        count += 1
        if count % 256 == 0 and time.monotonic() >= end:
            break
    return count


async def throughput_remote(target: str, streams: int, seconds: float) -> float:
    async with aio.connect(target) as client:
        queues = [await client.kqueue() for _ in range(streams)]
        for kq in queues:
            await kq.control(_always_ready(1000 // streams), 0)
        start = time.monotonic()
        counts = await asyncio.gather(*(_count_stream(kq, seconds) for kq in queues))
        elapsed = time.monotonic() - start
        for kq in queues:
            await kq.close()
        return sum(counts) / elapsed


def main(*, quick: bool, out: Path) -> int:
    trials = 30 if quick else 300
    seconds = 1.0 if quick else 3.0
    rows: list[list[str]] = []

    def row(what: str, samples: list[int]) -> None:
        p50, p99 = summary_ms(samples)
        rows.append([what, f"{p50:.3f}", f"{p99:.3f}"])

    with running_daemon() as target, kqclient.connect(target) as client, kqueue() as kq:
        stream = RemoteStream(client)
        row("exit: pidfd + epoll in process (floor)", [exit_floor() for _ in range(trials)])
        row("exit: kqd core in process", [exit_core(kq) for _ in range(trials)])
        row("exit: kqd remote stream (Unix socket)", [exit_remote(stream) for _ in range(trials)])
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "watched"
            path.write_bytes(b"")
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            for what, trial in [
                ("file write: inotify in process (floor)", file_floor(path, fd)),
                ("file write: kqd core in process", file_core(kq, path, fd)),
                ("file write: kqd remote stream (Unix socket)", file_remote(stream, path, fd)),
            ]:
                row(what, [trial() for _ in range(trials)])
            os.close(fd)
        core_rate = throughput_core(seconds)
        one = asyncio.run(throughput_remote(target, 1, seconds))
        many = asyncio.run(throughput_remote(target, 100, seconds))

    latency = table(["path", "p50 (ms)", "p99 (ms)"], rows)
    rates = table(
        ["stream", "events/s", "vs in-process core"],
        [
            ["kqd core in process (ceiling)", f"{core_rate:,.0f}", "1.00x"],
            ["kqd remote, 1 stream", f"{one:,.0f}", f"{one / core_rate:.2f}x"],
            ["kqd remote, 100 streams", f"{many:,.0f}", f"{many / core_rate:.2f}x"],
        ],
    )
    report = (
        f"### Notification latency ({trials} trials each)\n\n{latency}\n\n"
        f"### Streaming throughput ({seconds:.0f} s, 1000 always-ready knotes)\n\n{rates}\n"
    )
    print(report)
    (out / "remote.md").write_text(report)
    print(f"wrote {out / 'remote.md'}")
    return 0
