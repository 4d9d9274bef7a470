"""How every peer is timed: from the moment the benchmark makes something happen to the moment
the waiter knows.

In-process waiters (a function that blocks until notified) are timed directly. Command-line
waiters are timed to their exit, seen through a pidfd, so every tool pays its own teardown as a
user would; they get SETTLE seconds to start waiting first, because most of them (pidwait,
tail --pid, wait-for-it) have no way to say they are ready. A random extra wait of up to PHASE
seconds follows, so the event lands at a random point of a polling peer's period, not always
just before its next look (SETTLE alone is a whole number of 0.1 s periods).
"""

from __future__ import annotations

import os
import random
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SETTLE = 0.6
PHASE = 1.0  # the longest polling period among the peers (tail --pid, wait-for-it)
BOUND = 30.0


def settle() -> None:
    """Give a waiter time to start waiting, then land at a random phase of its polling."""
    time.sleep(SETTLE + random.uniform(0, PHASE))


@dataclass
class Peer:
    """One way to be told: *make(session)* prepares it and returns one timed trial (ns)."""

    name: str
    make: Callable[[Any], Callable[[], int]]
    slow: bool = False  # each trial takes about a second (a program to start): fewer trials


def timed(trigger: Callable[[], None], wait: Callable[[], object]) -> int:
    """ns from the start of *trigger* to the return of *wait* (in-process waiters)."""
    start = time.perf_counter_ns()
    trigger()
    wait()
    return time.perf_counter_ns() - start


def timed_command(argv: list[str], trigger: Callable[[], None]) -> int:
    """ns from the start of *trigger* to the exit of the command *argv* (started first)."""
    waiter = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfd = os.pidfd_open(waiter.pid)
    try:
        settle()
        with select.epoll() as ep:
            ep.register(pidfd, select.EPOLLIN)
            start = time.perf_counter_ns()
            trigger()
            if not ep.poll(BOUND):
                raise TimeoutError(f"{argv[0]} did not return within {BOUND}s")
            took = time.perf_counter_ns() - start
    finally:
        os.close(pidfd)
        waiter.kill()
        waiter.wait()
    return took


def exit_child() -> subprocess.Popen:
    """A child that exits as soon as one byte arrives on its stdin, and is reaped at once (as a
    supervisor would): tools that poll with kill(pid, 0) see a zombie as alive."""
    child = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    threading.Thread(target=child.wait, daemon=True).start()
    return child


def release(child: subprocess.Popen) -> None:
    """Let an exit_child() exit."""
    assert child.stdin is not None
    child.stdin.write(b"x")
    child.stdin.flush()
