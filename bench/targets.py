"""The performance issue's targets, checked against what one ``bench all`` measured.

A target is judged on the median over runs of a per-run value (a latency, or a ratio of two
numbers of the same run); "every run" targets on each run. Each line gives the median, the
spread over runs and the numbers behind a ratio; a target whose numbers are missing (a peer
skipped, a section not run) is marked skipped. Lines marked "measured" have no target.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from bench import (
    command_start,
    daemon_ready,
    exit_latency,
    fairness,
    file_latency,
    idle,
    port_latency,
    register_latency,
    throughput,
)
from bench.stats import Results

Cell = tuple[str, str, int]  # (table key, row, column)
P50, P99 = 0, 1


def _num(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


class Targets:
    def __init__(self, results: Results) -> None:
        self.results = results
        self.lines: list[str] = []

    def value(self, cell: Cell) -> float | None:
        return self.results.median(*cell)

    def per_run(
        self, a: Cell, b: Cell | None = None, op: Callable[[float, float], float] | None = None
    ) -> list[float] | None:
        """Each run's value of *a*, or of op(a, b) for two cells of the same run."""
        first = self.results.runs(*a)
        if b is None or first is None:
            return first
        second = self.results.runs(*b)
        if second is None or op is None or 0 in second or len(second) != len(first):
            return None
        return [op(x, y) for x, y in zip(first, second, strict=True)]

    def judge(
        self,
        what: str,
        values: list[float] | None,
        ok: Callable[[float], bool],
        unit: str = " ms",
        detail: str = "",
        every_run: bool = False,
    ) -> None:
        if values is None:
            self.lines.append(f"- **skipped** — {what}: not measured")
            return
        median = statistics.median(values)
        met = all(ok(v) for v in values) if every_run else ok(median)
        text = f"{_num(median)}{unit}"
        if len(values) > 1:
            text += f" (runs {_num(min(values))}-{_num(max(values))}{unit})"
        self.lines.append(f"- **{'met' if met else 'MISSED'}** — {what}: {text}{detail}")

    def ratio(
        self,
        what: str,
        a: Cell,
        b: Cell,
        ok: Callable[[float], bool],
        every_run: bool = False,
        unit: str = "ms",
    ) -> None:
        """Judge a/b of each run; the detail names both medians."""
        va, vb = self.value(a), self.value(b)
        detail = "" if va is None or vb is None else f" ({_num(va)} vs {_num(vb)} {unit})"
        values = self.per_run(a, b, lambda x, y: x / y)
        self.judge(what, values, ok, "x", detail, every_run)

    def note(self, what: str, measured: str) -> None:
        self.lines.append(f"- **measured** — {what}: {measured}")


def check(results: Results) -> list[str]:
    t = Targets(results)
    stream = ("exit", exit_latency.STREAM, P50)
    pidwait = ("exit", exit_latency.PIDWAIT, P50)
    tail = ("exit", exit_latency.TAIL, P50)
    kqctl = ("exit", exit_latency.KQCTL, P50)
    floor = ("exit", exit_latency.FLOOR, P50)
    t.judge(
        "exit -> client stream p50 <= floor + 0.5 ms (excess over the floor)",
        t.per_run(stream, floor, lambda x, y: x - y),
        lambda v: v <= 0.5,
    )
    t.ratio(
        "exit -> client stream <= 1.0x pidwait (timed to its exit)",
        stream,
        pidwait,
        lambda v: v <= 1.0,
    )
    t.judge(
        "exit -> client stream p99 <= 2 ms",
        t.per_run(("exit", exit_latency.STREAM, P99)),
        lambda v: v <= 2,
    )
    t.ratio(
        "exit -> client stream >= 100x faster than tail --pid", tail, stream, lambda v: v >= 100
    )
    t.ratio("kqctl pwait <= 3x pidwait after the event", kqctl, pidwait, lambda v: v <= 3)
    t.ratio("kqctl pwait >= 100x faster than tail --pid", tail, kqctl, lambda v: v >= 100)
    gone = ("start", command_start.KQCTL, P50)
    t.ratio(
        "kqctl pwait on a pid already gone vs pidwait (start -> exit)",
        gone,
        ("start", command_start.PIDWAIT, P50),
        lambda v: v <= 3,
    )
    bare, imports = (
        t.value(("start", command_start.PYTHON, P50)),
        t.value(("start", command_start.IMPORT, P50)),
    )
    if bare is not None and imports is not None:
        t.note(
            "the floor of a Python command line (start -> exit)",
            f'`python -c pass` {bare:.1f} ms, `python -c "import kqclient"` {imports:.1f} ms',
        )
    t.ratio(
        "kqctl pwait on a pid already gone vs tail --pid (start -> exit)",
        gone,
        ("start", command_start.TAIL, P50),
        lambda v: v <= 3,
    )

    fstream = ("file", file_latency.STREAM, P50)
    t.judge("file change -> client stream p50 <= 1 ms", t.per_run(fstream), lambda v: v <= 1)
    t.ratio(
        "file change: client stream >= 20x faster than Watchman's default subscription",
        ("file", file_latency.WATCHMAN, P50),
        fstream,
        lambda v: v >= 20,
    )
    t.ratio(
        "file change: client stream matches watchdog (in process)",
        fstream,
        ("file", file_latency.WATCHDOG, P50),
        lambda v: v <= 1,
    )
    t.ratio(
        "file change: in-process VNODE event <= 3x the raw inotify floor",
        ("file", file_latency.CORE, P50),
        ("file", file_latency.FLOOR, P50),
        lambda v: v <= 3,
    )

    t.ratio(
        "kqctl wait-port >= 100x faster than wait-for-it, in every run",
        ("port", port_latency.WAIT_FOR_IT, P50),
        ("port", port_latency.KQCTL, P50),
        lambda v: v >= 100,
        every_run=True,
    )
    kq_cpu = t.value(("idle", idle.WAIT_PORT, 0))
    daemon_cpu = t.value(("idle", idle.WAIT_PORT_DAEMON, 0))
    wfi_cpu = t.value(("idle", idle.WAIT_FOR_IT, 0))
    if kq_cpu is not None and daemon_cpu is not None:
        t.note(
            "CPU while kqctl wait-port waits on a refused port",
            f"{kq_cpu + daemon_cpu:.1f}% of a core (kqctl {kq_cpu:.1f}%, daemon "
            f"{daemon_cpu:.1f}%)" + ("" if wfi_cpu is None else f"; wait-for-it {wfi_cpu:.2f}%"),
        )

    sizes = results.tables.get("wakeup", [])
    if sizes:
        rows = list(sizes[0].rows)
        t.ratio(
            f"wake-up cost at N={rows[-1]} within 1.5x of N={rows[0]}",
            ("wakeup", rows[-1], 0),
            ("wakeup", rows[0], 0),
            lambda v: v <= 1.5,
            unit="µs",
        )
    t.judge(
        "idle CPU with 10k registrations < 0.5% of one core",
        t.per_run(("idle", idle.DAEMON, 0)),
        lambda v: v < 0.5,
        unit="%",
    )

    one = ("throughput", throughput.ONE, 0)
    t.judge(
        ">= 200k events/s to one client stream", t.per_run(one), lambda v: v >= 200_000, unit="/s"
    )
    t.ratio(
        "one stream >= 50% of the in-process core's events/s",
        one,
        ("throughput", throughput.CORE, 0),
        lambda v: v >= 0.5,
        unit="/s",
    )
    t.ratio(
        "the same with --no-state: one stream >= 50% of the in-process core's events/s",
        ("throughput", throughput.ONE_NO_STATE, 0),
        ("throughput", throughput.CORE, 0),
        lambda v: v >= 0.5,
        unit="/s",
    )
    t.ratio(
        "100 streams (aggregate) >= 80% of one stream's events/s",
        ("throughput", throughput.HUNDRED, 0),
        one,
        lambda v: v >= 0.8,
        unit="/s",
    )

    served = t.value(("throughput", throughput.SERVED, 0))
    if served is not None:
        t.note("100 busy streams: streams that got any event in the window", f"{served:.0f} of 100")
    stall = t.value(("bulk", fairness.CLOSE, 0))
    if stall is not None:
        t.note("one long call: CloseQueue of the bulk client's queue", f"{stall:,.0f} ms")
    t.judge(
        "fairness: wake-up p99 <= 5 ms while another client registers in bulk",
        t.per_run(("fairness", exit_latency.STREAM, P99)),
        lambda v: v <= 5,
    )
    t.ratio(
        "a change on a running stream (Session) answers faster than a unary Register",
        ("register", register_latency.SESSION, P50),
        ("register", register_latency.UNARY_REGISTER, P50),
        lambda v: v < 1.0,
        unit="µs",
    )
    t.judge(
        "wait_for_daemon() returns within 100 ms of the daemon serving (worst trial)",
        t.per_run(("ready", daemon_ready.LAG, 1)),
        lambda v: v <= 100,
        every_run=True,
    )
    return t.lines
