"""Fairness: one client's wake-up while another client registers knotes in bulk.

A loader process (this module run as a program) registers LOAD USER knotes into a fresh queue in
changelists of 10,000 (the daemon's limit per call), closes the queue and starts again, until it
is stopped. Meanwhile exit -> client stream trials run as in bench/exit_latency.py, each after a
random idle of up to PHASE, so events land at any point of the loader's calls.
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


def load(target: str, count: int) -> None:
    """The loader: prints "ready" once connected, then per round the queue's id as it starts and
    the seconds it took as it ends."""
    changes = user(count)
    with kqclient.connect(target) as client:
        client.kqueue().close()
        print("ready", flush=True)
        while True:
            start = time.monotonic()
            with client.kqueue() as kq:
                print(f"queue {kq.queue_id}", flush=True)
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
        if loader.stdout.readline().strip() != "ready":
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
    queues = [line.split()[1] for line in lines if line.startswith("queue ")]
    if queues:  # the queue it was filling when stopped: not left to its lease
        session.client.kqueue(queues[-1]).close()
    durations = [float(line) for line in lines if not line.startswith("queue ")]
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
            "Bulk registration by that client (changelists of 10,000)",
            ["client", "knotes/s"],
            {"the loader": [rate]},
            fmt="{:,.0f}",
        ),
    ]


if __name__ == "__main__":
    load(sys.argv[1], int(sys.argv[2]))
