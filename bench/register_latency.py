"""Registration round trip: a unary call against a change sent on a running stream's Session.

One change per call (EV_ADD of an existing USER knote: the daemon's work is the same small
modification each time), timed from the call to its answer in the calling thread. The three
ways are interleaved call by call, on queues of their own, so all see the same daemon state.
"""

from __future__ import annotations

import time

from bench.session import Session
from bench.stats import Table, p50_p99
from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_USER, kevent

TRIALS, QUICK_TRIALS = 2000, 50
UNARY_REGISTER = "Register (unary call)"
UNARY_KEVENT = "control(changes, 0) (unary Kevent call)"
SESSION = "register() on a running stream (Session)"


def measure(session: Session) -> list[Table]:
    change = [kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, 0, 0, b"job")]
    streaming = session.stream.kq  # its stream() runs: register() goes through its Session
    unary = session.client.kqueue()
    ways = {
        UNARY_REGISTER: lambda: unary.register(change),
        UNARY_KEVENT: lambda: unary.control(change, 0),
        SESSION: lambda: streaming.register(change),
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(QUICK_TRIALS if session.quick else TRIALS):
        for name, call in ways.items():
            start = time.perf_counter_ns()
            call()
            samples[name].append((time.perf_counter_ns() - start) / 1000)
    unary.close()
    rows = {name: p50_p99(values) for name, values in samples.items()}
    title = "Registration round trip, one change (µs)"
    return [Table("register", title, ["call", "p50 (µs)", "p99 (µs)"], rows, fmt="{:,.0f}")]
