"""``python -m bench all``: every comparison in one run, one Markdown report, plots.

Sections run in a fixed order against one daemon; each prints its table as it finishes. The
report ends with the targets from the project's performance issue, each marked met or missed
with the number measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import exit_latency, file_latency, idle, memory, port_latency, throughput, wakeup
from bench.peers import Skip
from bench.session import Session, session
from bench.stats import percentile, table
from bench.waiting import Peer


@dataclass
class Latency:
    """p50/p99 (ms) per peer of one comparison; None where the peer was skipped."""

    title: str
    rows: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def p50(self, peer: str) -> float | None:
        row = self.rows.get(peer)
        return None if row is None else row[0]

    def markdown(self) -> str:
        lines = [
            [name, f"{r[0]:.3f}", f"{r[1]:.3f}"] if r else [name, "skipped", self.skipped[name]]
            for name, r in self.rows.items()
        ]
        return f"### {self.title}\n\n" + table(["peer", "p50 (ms)", "p99 (ms)"], lines)


def run_latency(title: str, peers: list[Peer], run: Session) -> Latency:
    result = Latency(title)
    for peer in peers:
        trials = (3 if peer.slow else 10) if run.quick else (15 if peer.slow else 100)
        try:
            trial = peer.make(run)
            samples = [trial() / 1e6 for _ in range(trials)]
        except Skip as skip:
            result.rows[peer.name] = None
            result.skipped[peer.name] = str(skip)
            print(f"  {peer.name}: skipped ({skip})")
            continue
        result.rows[peer.name] = (statistics.median(samples), percentile(samples, 0.99))
        print(f"  {peer.name}: p50 {result.rows[peer.name][0]:.3f} ms")
    return result


class Targets:
    """The performance issue's targets, checked against what was measured."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def check(self, what: str, ok: bool | None, measured: str) -> None:
        mark = "skipped" if ok is None else ("met" if ok else "MISSED")
        self.lines.append(f"- **{mark}** — {what}: {measured}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def check_targets(
    t: Targets,
    exits: Latency,
    files: Latency,
    ports: Latency,
    wake: list[tuple[int, float, float | None]],
    idle_rows: list[tuple[str, float]],
    rates: list[tuple[str, float]],
) -> None:
    stream, floor = exits.rows.get(exit_latency.STREAM), exits.p50(exit_latency.FLOOR)
    if stream and floor is not None:
        t.check(
            "exit -> client p50 <= floor + 0.5 ms",
            stream[0] <= floor + 0.5,
            f"{stream[0]:.3f} ms vs floor {floor:.3f} ms",
        )
        t.check("exit -> client p99 <= 5 ms", stream[1] <= 5, f"{stream[1]:.3f} ms")
    pidwait, tail = exits.p50(exit_latency.PIDWAIT), exits.p50(exit_latency.TAIL)
    client = None if stream is None else stream[0]
    for subject, p50 in [
        ("exit -> client", client),
        ("kqctl pwait", exits.p50(exit_latency.KQCTL)),
    ]:
        ratio = _ratio(p50, pidwait)
        t.check(
            f"{subject} within 2x of pidwait",
            None if ratio is None else ratio <= 2,
            "n/a" if ratio is None else f"{p50:.2f} vs {pidwait:.2f} ms ({ratio:.2f}x)",
        )
        ratio = _ratio(tail, p50)
        t.check(
            f"{subject} >= 100x faster than tail --pid",
            None if ratio is None else ratio >= 100,
            "n/a" if ratio is None else f"{ratio:.0f}x ({p50:.2f} vs {tail:.1f} ms)",
        )
    fstream = files.p50(file_latency.STREAM)
    t.check(
        "file change -> client p50 <= 1 ms",
        None if fstream is None else fstream <= 1,
        "n/a" if fstream is None else f"{fstream:.3f} ms",
    )
    ratio = _ratio(files.p50(file_latency.WATCHMAN), fstream)
    t.check(
        "file change >= 20x faster than Watchman's default subscription",
        None if ratio is None else ratio >= 20,
        "n/a" if ratio is None else f"{ratio:.0f}x",
    )
    ratio = _ratio(fstream, files.p50(file_latency.WATCHDOG))
    t.check(
        "file change: match watchdog (in process)",
        None if ratio is None else ratio <= 1,
        "n/a" if ratio is None else f"kqd/watchdog = {ratio:.2f}",
    )
    ratio = _ratio(ports.p50(port_latency.WAIT_FOR_IT), ports.p50(port_latency.KQCTL))
    t.check(
        "kqctl wait-port >= 100x faster than wait-for-it",
        None if ratio is None else ratio >= 100,
        "n/a" if ratio is None else f"{ratio:.0f}x",
    )
    flat = wake[-1][1] / wake[0][1]
    t.check(
        f"wakeup cost at N={wake[-1][0]:,} within 1.5x of N={wake[0][0]}",
        flat <= 1.5,
        f"{flat:.2f}x",
    )
    daemon_cpu = idle_rows[0][1]
    t.check(
        "idle CPU with 10k registrations < 0.5% of one core", daemon_cpu < 0.5, f"{daemon_cpu:.3f}%"
    )
    core, one = rates[0][1], rates[1][1]
    t.check(">= 200k events/s to one client", one >= 200_000, f"{one:,.0f}/s")
    t.check(
        ">= 50% of the in-process core's rate",
        one >= core / 2,
        f"{100 * one / core:.0f}% ({core:,.0f}/s in process)",
    )


def _plots(out: Path, latencies: list[Latency], wake: list, rates: list) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (python -m bench setup)")
        return []
    fig, axes = plt.subplots(len(latencies), 1, figsize=(9, 3.2 * len(latencies)))
    for ax, lat in zip(axes, latencies, strict=True):
        names = [n for n, r in lat.rows.items() if r]
        values = [lat.rows[n][0] for n in names]  # type: ignore[index]
        colors = [
            "tab:blue" if n.startswith("kqd") or n.startswith("kqctl") else "tab:gray"
            for n in names
        ]
        ax.barh(names, values, color=colors)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency (ms, log scale)")
        ax.set_title(lat.title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([w[0] for w in wake], [w[1] for w in wake], marker="o", label="kqd remote control()")
    polled = [(w[0], w[2]) for w in wake if w[2] is not None]
    ax.plot([p[0] for p in polled], [p[1] for p in polled], marker="o", label="select.poll")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="registered (N)",
        ylabel="one wake-up (µs)",
        title="Wake-up cost vs registrations",
    )
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "wakeup.png", dpi=100)
    return ["latency.png", "wakeup.png"]


def run(*, quick: bool, out: Path, only: set[str] | None = None) -> str:
    """Run the comparisons (all, or *only* these sections) and write the report."""
    started = time.monotonic()
    sections: list[str] = []
    wanted: Callable[[str], bool] = lambda name: only is None or name in only  # noqa: E731
    with session(quick) as run_:
        latencies = []
        for name, title, peers in [
            ("exit", "Process exit -> notified", exit_latency.PEERS),
            ("file", "File change -> notified", file_latency.PEERS),
            ("port", "Port connectable -> notified", port_latency.PEERS),
        ]:
            if wanted(name):
                print(title)
                latencies.append(run_latency(title, peers, run_))
                sections.append(latencies[-1].markdown())
        wake = wakeup.measure(run_) if wanted("wakeup") else []
        idle_rows = idle.measure(run_) if wanted("idle") else []
        mem = memory.measure(run_) if wanted("memory") else []
        rates = throughput.measure(run_) if wanted("throughput") else []
    for title, header, rows in [
        (
            "Wake-up cost vs registrations (µs, median)",
            ["N registered", "kqd remote control()", "select.poll over N descriptors"],
            [[f"{n:,}", f"{k:.1f}", "n/a" if p is None else f"{p:.1f}"] for n, k, p in wake],
        ),
        ("Idle CPU (% of one core)", ["process", "CPU %"], [[n, f"{c:.3f}"] for n, c in idle_rows]),
        (
            "Daemon memory per knote",
            ["filter", "knotes", "RSS bytes per knote"],
            [[n, f"{k:,}", f"{b:,.0f}"] for n, k, b in mem],
        ),
        (
            "Streaming throughput (events/s)",
            ["stream", "events/s", "vs in process"],
            [[n, f"{r:,.0f}", f"{r / rates[0][1]:.2f}x"] for n, r in rates],
        ),
    ]:
        if rows:
            sections.append(f"### {title}\n\n" + table(header, rows))
    report = "\n\n".join(sections)
    if only is None:
        targets = Targets()
        check_targets(targets, *latencies, wake, idle_rows, rates)
        report += "\n\n### Targets\n\n" + "\n".join(targets.lines)
    plots = _plots(out, latencies, wake, rates) if latencies and wake else []
    report += "".join(f"\n\n![{p}]({p})" for p in plots)
    elapsed = time.monotonic() - started
    report = (
        f"## kqd benchmarks ({'quick' if quick else 'full'} run, {elapsed:.0f} s, "
        f"2-core machine, Unix socket)\n\n{report}\n"
    )
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out / 'report.md'}")
    return report
