"""The kqueue paper's figure: the cost of one wait that returns 1 event, N registered.

Three columns, measured in the same run: the kqd core with N USER knotes (no descriptors), the
kqd core with N READ knotes on eventfds, and ``select.poll`` over the same N eventfds (the
baseline that grows linearly). Descriptor columns stop at the process's descriptor limit. Each
cell is the median of many timed waits; the memory rows are tracemalloc's count of Python heap
per registered USER and TIMER knote.
"""

from __future__ import annotations

import os
import resource
import select
import statistics
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from bench.stats import table
from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_READ,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_NOTE_SECONDS,
    KQ_NOTE_TRIGGER,
    kevent,
    kqueue,
)

SIZES = [10, 100, 1_000, 10_000, 100_000]
QUICK_SIZES = [10, 1_000]


def _median_us(
    one_wait: Callable[[], None], rounds: int, before: Callable[[], None] = lambda: None
) -> float:
    """Median time of *one_wait* over *rounds*, calling *before* (untimed) ahead of each."""
    samples = []
    for _ in range(rounds):
        before()
        start = time.perf_counter_ns()
        one_wait()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _one_event(kq) -> Callable[[], None]:
    def one_wait() -> None:
        assert len(kq.control(None, 1, 0)) == 1, "the active knote did not fire"

    return one_wait


def core_user(n: int, rounds: int) -> float:
    with kqueue() as kq:
        kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(n)], 0)
        trigger = [kevent(n // 2, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)]
        return _median_us(_one_event(kq), rounds, lambda: kq.control(trigger, 0))


def _eventfds(n: int) -> list[int]:
    return [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(n)]


def core_fd(n: int, rounds: int) -> float:
    fds = _eventfds(n)
    active = fds[n // 2]

    def make_readable() -> None:
        os.eventfd_write(active, 1)

    try:
        with kqueue() as kq:
            kq.control([kevent(fd, KQ_FILTER_READ, KQ_EV_ADD | KQ_EV_CLEAR) for fd in fds], 0)
            one_wait = _one_event(kq)

            def wait_and_drain() -> None:
                one_wait()
                os.eventfd_read(active)

            return _median_us(wait_and_drain, rounds, make_readable)
    finally:
        for fd in fds:
            os.close(fd)


def poll_baseline(n: int, rounds: int) -> float:
    fds = _eventfds(n)
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        active = fds[n // 2]
        os.eventfd_write(active, 1)

        def one_wait() -> None:
            assert len(poller.poll(0)) == 1

        return _median_us(one_wait, rounds)
    finally:
        for fd in fds:
            os.close(fd)


def bytes_per_knote(filt: int, n: int) -> float:
    with kqueue() as kq:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        if filt == KQ_FILTER_USER:
            changes = [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(n)]
        else:
            changes = [
                kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600) for i in range(n)
            ]
        kq.control(changes, 0)
        del changes
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / n


def main(*, quick: bool, out: Path) -> int:
    sizes = QUICK_SIZES if quick else SIZES
    rounds = 200 if quick else 2000
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200
    rows = []
    for n in sizes:
        fd_ok = n <= fd_limit
        rows.append(
            (
                n,
                core_user(n, rounds),
                core_fd(n, rounds) if fd_ok else None,
                poll_baseline(n, rounds) if fd_ok else None,
            )
        )
    memory_n = 10_000 if quick else 100_000
    mem_user = bytes_per_knote(KQ_FILTER_USER, memory_n)
    mem_timer = bytes_per_knote(KQ_FILTER_TIMER, memory_n)

    def cell(value: float | None) -> str:
        return "n/a (fd limit)" if value is None else f"{value:.2f}"

    header = [
        "N registered",
        "kqd core, USER knotes (µs)",
        "kqd core, READ on eventfds (µs)",
        "select.poll, same eventfds (µs)",
    ]
    lines = [table(header, [[f"{n:,}", cell(u), cell(f), cell(p)] for n, u, f, p in rows])]
    first, last = rows[0], rows[-1]
    ratio = last[1] / first[1]
    lines.append("")
    lines.append(
        f"kqd core cost at N={last[0]:,} / N={first[0]:,}: {ratio:.2f}x (target <= 1.5x); "
        f"memory per knote: USER {mem_user:.0f} B, TIMER {mem_timer:.0f} B (target < 1024 B)"
    )
    report = "\n".join(lines)
    print(report)
    (out / "scaling.md").write_text(report + "\n")
    _plot(rows, out / "scaling.png")
    print(f"\nwrote {out / 'scaling.md'} and {out / 'scaling.png'}")
    return 0


def _plot(rows: list[tuple[int, float, float | None, float | None]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = [(1, "kqd core, USER knotes"), (2, "kqd core, READ on eventfds"), (3, "select.poll")]
    for index, label in series:
        points = [(row[0], value) for row in rows if (value := row[index]) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("registered knotes / descriptors (N)")
    ax.set_ylabel("one wait returning 1 event (µs, median)")
    ax.set_title("Cost of a wait vs. registrations")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
