"""``python -m bench state``: what durability costs, and how fast a restart is.

Two daemons side by side, one with a state directory and one without (``--no-state``), measured
in the same run, rounds interleaved: the events per second one client streams (a producer
triggers 512 EV_CLEAR USER knotes per call, a consumer streams them), and the median Register
round trip. Then a daemon with N knotes is killed (SIGKILL) and started again on its state: how
long the restore takes (from its log) and how soon it serves, and the state's bytes per knote.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import kqclient
from kqclient import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent

from bench.daemon import POLICY
from bench.stats import table
from kqd.daemon.server import serve_command

KNOTES_PER_CALL = 512


def _start(directory: Path, state: Path | None) -> tuple[subprocess.Popen[str], str]:
    target = f"unix://{directory / 'kqd.sock'}"
    proc = subprocess.Popen(
        serve_command(target, "--policy", str(POLICY), log_level="info", state=state),
        stderr=subprocess.PIPE,
        text=True,
    )
    kqclient.wait_for_daemon(target, timeout=60)
    return proc, target


def _stream_rate(target: str, seconds: float) -> float:
    """Events per second one client streams while another triggers them as fast as it can."""
    with kqclient.connect(target) as client:
        kq = client.kqueue()
        ids = range(KNOTES_PER_CALL)
        kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in ids], 0)
        triggers = [kevent(i, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER) for i in ids]
        stop = time.monotonic() + seconds

        def produce() -> None:
            with kqclient.connect(target) as producer:
                queue = producer.kqueue(kq.queue_id)
                while time.monotonic() < stop:
                    queue.control(triggers, 0)

        producer = threading.Thread(target=produce)
        producer.start()
        started, got = time.monotonic(), 0
        for batch in kq.stream_batches():
            got += len(batch)
            if time.monotonic() > stop:
                break
        producer.join()
        kq.close()
        return got / (time.monotonic() - started)


def _register_p50(target: str, calls: int) -> float:
    with kqclient.connect(target) as client:
        kq = client.kqueue()
        times = []
        for i in range(calls):
            start = time.perf_counter()
            kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD)], 0)
            times.append(time.perf_counter() - start)
        kq.close()
    return statistics.median(times)


def _restart(count: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="kqd-bench-state-") as name:
        directory = Path(name)
        state = directory / "state"
        proc, target = _start(directory, state)
        with kqclient.connect(target) as client:
            kq = client.kqueue()
            for first in range(0, count, 10_000):
                idents = range(first, min(count, first + 10_000))
                kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD, 0, 0, b"job") for i in idents], 0)
        proc.kill()
        proc.wait()
        size = sum(f.stat().st_size for f in state.iterdir())
        started = time.monotonic()
        proc, target = _start(directory, state)
        serving = time.monotonic() - started
        proc.terminate()
        log = proc.communicate()[1]
        found = re.search(r"restored in ([0-9.]+)s", log)
        restored = float(found.group(1)) if found else float("nan")
        return [f"{count:,}", f"{restored:.2f}", f"{serving:.2f}", f"{size / count:.0f}"]


def main(quick: bool) -> int:
    seconds, rounds, calls = (0.5, 1, 50) if quick else (2.0, 3, 300)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    latency: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="kqd-bench-state-") as name:
        daemons = {}
        for kind in ("off", "on"):
            directory = Path(name) / kind
            directory.mkdir()
            daemons[kind] = _start(directory, directory / "state" if kind == "on" else None)
        try:
            for _ in range(rounds):
                for kind, (_, target) in daemons.items():
                    rates[kind].append(_stream_rate(target, seconds))
                    latency[kind].append(_register_p50(target, calls))
        finally:
            for proc, _ in daemons.values():
                proc.terminate()
                proc.wait()
    rows = [
        [f"state {kind}", f"{statistics.median(rates[kind]):,.0f}",
         f"{statistics.median(latency[kind]) * 1e6:.0f}"]
        for kind in ("off", "on")
    ]  # fmt: skip
    cost = 1 - statistics.median(rates["on"]) / statistics.median(rates["off"])
    print("### Durability: state on vs off (same run)\n")
    print(table(["daemon", "stream events/s", "Register p50 (µs)"], rows))
    print(f"\nstate costs {cost:.0%} of stream throughput (target <= 30%)\n")
    print("### Restart after kill -9\n")
    sizes = [1_000] if quick else [10_000, 100_000]
    header = ["knotes", "restored in (s)", "serving after start (s)", "disk bytes per knote"]
    print(table(header, [_restart(n) for n in sizes]))
    return 0
