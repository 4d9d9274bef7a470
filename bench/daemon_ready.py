"""How soon ``kqclient.wait_for_daemon()`` returns once a starting daemon serves.

Each trial starts ``kqd serve`` on a fresh socket with wait_for_daemon() already waiting in a
thread, while the main thread tries a raw health Check every millisecond (on a new channel each
time, once the socket accepts connections); times are from the start of the daemon.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc
import kqclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.daemon import command
from bench.session import Session
from bench.stats import Cell, Table
from bench.waiting import BOUND

TRIALS, QUICK_TRIALS = 10, 2
SERVING = "first raw health Check answered SERVING"
RETURNED = "wait_for_daemon() returned"
LAG = "wait_for_daemon() after serving"


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        return probe.connect_ex(str(path)) == 0


def _serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def one_start() -> tuple[float, float]:
    """ms from starting the daemon to (its first SERVING answer, wait_for_daemon returning)."""
    with tempfile.TemporaryDirectory(prefix="kqd-bench-") as directory:
        path = Path(directory) / "kqd.sock"
        target = f"unix://{path}"
        returned: list[int] = []

        def wait() -> None:
            kqclient.wait_for_daemon(target, BOUND)
            returned.append(ns())

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        start = ns()
        daemon = subprocess.Popen(command(target, Path(directory) / "state"))
        try:
            deadline = time.monotonic() + BOUND
            while not (_accepts(path) and _serving(target)):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("kqd serve did not start")
                time.sleep(0.001)
            serving = ns()
            waiter.join(BOUND)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(BOUND)
        if not returned:
            raise TimeoutError("wait_for_daemon() did not return")
        return (serving - start) / 1e6, (returned[0] - start) / 1e6


def ns() -> int:
    return time.perf_counter_ns()


def measure(session: Session) -> list[Table]:
    starts = [one_start() for _ in range(QUICK_TRIALS if session.quick else TRIALS)]

    def p50_max(values: list[float]) -> list[Cell]:
        return [statistics.median(values), max(values)]

    rows: dict[str, list[Cell] | str] = {
        SERVING: p50_max([s for s, _ in starts]),
        RETURNED: p50_max([r for _, r in starts]),
        LAG: p50_max([r - s for s, r in starts]),
    }
    title = "Daemon start -> a client knows it serves (ms from starting kqd serve)"
    return [Table("ready", title, ["moment", "p50 (ms)", "max (ms)"], rows)]
