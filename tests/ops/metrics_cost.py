"""What the metrics cost a stream: events per second to one client, metrics on against off.

Two daemons run side by side, one with ``--metrics-listen`` and one without; one client streams
from each in turn (bench's throughput load: 1000 level-triggered USER knotes triggered once, so
the queue never runs dry and the rate is the delivery path's alone), alternating which goes first
in each round, and the medians are compared: the rate, and the daemon's CPU time per event (from
/proc, steadier than the rate on a shared machine, where client and daemon contend for the same
cores). Run from the repository root::

    .venv/bin/python -m tests.ops.metrics_cost [--runs 5] [--seconds 3]

Not a test (timings on a shared machine vary); tests/ops/test_metrics.py checks the values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import kqclient

from bench.daemon import POLICY
from bench.throughput import remote_rate
from kqd.daemon.server import serve_command
from tests.conftest import free_tcp_port


@contextlib.contextmanager
def daemon(directory: Path, name: str, *extra: str) -> Iterator[tuple[str, int]]:
    """A daemon on a socket named *name*: its target and pid."""
    target = f"unix://{directory / name}.sock"
    proc = subprocess.Popen(serve_command(target, "--policy", str(POLICY), *extra))
    try:
        kqclient.wait_for_daemon(target, timeout=30)
        yield target, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process *pid* so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # daemon CPU microseconds per event
    with (
        tempfile.TemporaryDirectory(prefix="kqd-metrics-cost-") as directory,
        daemon(Path(directory), "off") as off,
        daemon(Path(directory), "on", "--metrics-listen", str(free_tcp_port())) as on,
    ):
        targets = {"off": off, "on": on}
        for run in range(args.runs):
            order = ("off", "on") if run % 2 == 0 else ("on", "off")
            for name in order:
                target, pid = targets[name]
                before = cpu_seconds(pid)
                rate = asyncio.run(remote_rate(target, 1, args.seconds))
                per_event = (cpu_seconds(pid) - before) / (rate * args.seconds) * 1e6
                rates[name].append(rate)
                cpu[name].append(per_event)
                print(
                    f"run {run + 1} metrics {name:>3}: {rate:>10,.0f} events/s, daemon "
                    f"{per_event:.3f} us CPU/event",
                    flush=True,
                )
    off_median, on_median = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"median metrics off: {off_median:,.0f} events/s ({args.runs} runs)")
    print(f"median metrics on:  {on_median:,.0f} events/s ({args.runs} runs)")
    print(f"cost of metrics: {(1 - on_median / off_median) * 100:+.1f}% of the throughput")
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"daemon CPU per event: {cpu_off:.3f} us off, {cpu_on:.3f} us on "
        f"({(cpu_on / cpu_off - 1) * 100:+.1f}%)"
    )


if __name__ == "__main__":
    main()
