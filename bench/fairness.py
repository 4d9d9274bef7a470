"""Fairness: one client's wake-up while another client registers knotes in bulk.

A loader process (this module run as a program) registers LOAD USER knotes into one queue in
changelists of 10,000 (the daemon's limit per call), then registers them again (EV_ADD of an
existing knote modifies it), round after round, until it is stopped. Meanwhile exit -> client
stream trials run as in bench/exit_latency.py, each after a random idle of up to PHASE, so events
land at any point of the loader's calls. The queue is closed afterwards, timed on its own: closing
a queue that large is one more long call.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import kqclient

from bench import exit_latency
from bench.registrations import batched, user
from bench.rounds import QUICK_TRIALS, TRIALS
from bench.session import Session
from bench.stats import Table, p50_p99
from bench.waiting import time_one

LOAD, QUICK_LOAD = 300_000, 30_000
PHASE = 0.05
RATE = "knotes registered per second, changelists of 10,000"
CLOSE = "CloseQueue of its queue afterwards, ms"


def load(target: str, count: int) -> None:
    """The loader: prints its queue's id once connected, then the seconds each round took."""
    changes = user(count)
    with kqclient.connect(target) as client:
        kq = client.kqueue()
        print(kq.queue_id, flush=True)
        while True:
            start = time.monotonic()
            batched(kq, changes)
            print(time.monotonic() - start, flush=True)


def measure(session: Session) -> list[Table]:
    count = QUICK_LOAD if session.quick else LOAD
    loader = subprocess.Popen(
        [sys.executable, "-m", "bench.fairness", session.target, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert loader.stdout is not None
    try:
        queue_id = loader.stdout.readline().strip()
        if not queue_id:
            raise RuntimeError("the loader did not start")
        arm = exit_latency.remote_stream(session)
        trials = QUICK_TRIALS if session.quick else TRIALS
        samples = [time_one(arm, random.uniform(0, PHASE)) / 1e6 for _ in range(trials)]
        if loader.poll() is not None:
            raise RuntimeError(f"the loader failed (exit {loader.returncode}): see its stderr")
    finally:
        loader.kill()
        lines = loader.stdout.read().split("\n")[:-1]  # complete lines only
        loader.wait()
    start = time.perf_counter()
    session.client.kqueue(queue_id).close()
    close_ms = (time.perf_counter() - start) * 1000
    durations = [float(line) for line in lines]
    rate = count * len(durations) / sum(durations) if durations else None
    title = f"Wake-up while another client registers {count:,} knotes"
    return [
        Table(
            "fairness",
            title,
            ["waiter", "p50 (ms)", "p99 (ms)"],
            {exit_latency.STREAM: p50_p99(samples)},
        ),
        Table(
            "bulk",
            "The client registering in bulk",
            ["", "value"],
            {RATE: [rate], CLOSE: [close_ms]},
            fmt="{:,.0f}",
        ),
    ]


if __name__ == "__main__":
    load(sys.argv[1], int(sys.argv[2]))
