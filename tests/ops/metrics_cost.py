"""What the metrics cost a stream: events per second to one client, metrics on against off.

Two daemons run side by side, one with ``--metrics-listen`` and one without; one client streams
from each in turn (bench's throughput load: 1000 level-triggered USER knotes triggered once, so
the queue never runs dry and the rate is the delivery path's alone), alternating which goes first
in each round, and the medians are compared. Run from the repository root::

    .venv/bin/python -m tests.ops.metrics_cost [--runs 5] [--seconds 3]

Not a test (timings on a shared machine vary); tests/ops/test_metrics.py checks the values.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
def daemon(directory: Path, name: str, *extra: str) -> Iterator[str]:
    target = f"unix://{directory / name}.sock"
    proc = subprocess.Popen(serve_command(target, "--policy", str(POLICY), *extra))
    try:
        kqclient.wait_for_daemon(target, timeout=30)
        yield target
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with (
        tempfile.TemporaryDirectory(prefix="kqd-metrics-cost-") as directory,
        daemon(Path(directory), "off") as off,
        daemon(Path(directory), "on", "--metrics-listen", str(free_tcp_port())) as on,
    ):
        targets = {"off": off, "on": on}
        for run in range(args.runs):
            order = ("off", "on") if run % 2 == 0 else ("on", "off")
            for name in order:
                rate = asyncio.run(remote_rate(targets[name], 1, args.seconds))
                rates[name].append(rate)
                print(f"run {run + 1} metrics {name:>3}: {rate:>10,.0f} events/s", flush=True)
    off_median, on_median = statistics.median(rates["off"]), statistics.median(rates["on"])
    print(f"median metrics off: {off_median:,.0f} events/s ({args.runs} runs)")
    print(f"median metrics on:  {on_median:,.0f} events/s ({args.runs} runs)")
    print(f"cost of metrics: {(1 - on_median / off_median) * 100:+.1f}% of the throughput")


if __name__ == "__main__":
    main()
