"""The kqueue paper's figure, remote: the cost of one wait that returns 1 event, N registered.

kqd: a remote queue with N USER knotes, one triggered (untimed), then one ``control()`` round
trip timed. Baseline: ``select.poll`` over N descriptors, one ready (what a poll-based watcher
pays per wake-up). Medians.
"""

from __future__ import annotations

import os
import select
import statistics
import time

from bench.session import Session
from bench.stats import Cell, Table
from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent

SIZES = [10, 100, 1_000, 10_000, 50_000]
QUICK_SIZES = [10, 1_000]
POLL_LIMIT = 10_000  # descriptors: the machine allows 20,000 per process


def remote_cost_us(session: Session, n: int, rounds: int) -> float:
    kq = session.client.kqueue()
    try:
        for start in range(0, n, 10_000):
            changes = [
                kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)
                for i in range(start, min(n, start + 10_000))
            ]
            kq.control(changes, 0)
        trigger = [kevent(n // 2, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)]
        samples = []
        for _ in range(rounds):
            kq.control(trigger, 0)
            begin = time.perf_counter_ns()
            assert len(kq.control(None, 1, 0)) == 1
            samples.append(time.perf_counter_ns() - begin)
        return statistics.median(samples) / 1000
    finally:
        kq.close()


def poll_cost_us(n: int, rounds: int) -> float | None:
    if n > POLL_LIMIT:
        return None
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(n)]
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        os.eventfd_write(fds[n // 2], 1)
        samples = []
        for _ in range(rounds):
            begin = time.perf_counter_ns()
            assert len(poller.poll(0)) == 1
            samples.append(time.perf_counter_ns() - begin)
        return statistics.median(samples) / 1000
    finally:
        for fd in fds:
            os.close(fd)


def measure(session: Session) -> list[Table]:
    sizes = QUICK_SIZES if session.quick else SIZES
    rounds = 50 if session.quick else 300
    rows: dict[str, list[Cell] | str] = {
        f"{n:,}": [remote_cost_us(session, n, rounds), poll_cost_us(n, rounds)] for n in sizes
    }
    header = ["N registered", "kqd remote control()", "select.poll over N descriptors"]
    title = "Wake-up cost vs registrations (µs, median)"
    return [Table("wakeup", title, header, rows, fmt="{:,.1f}")]
