"""kqclient.wait_for_daemon(): it returns once the daemon serves, and gives up after its timeout
(nobody there, or something there that never answers)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import grpc
import kqclient
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kqd.daemon.server import serve_command
from kqd.v1 import kqd_pb2
from tests.conftest import WAIT_BOUND

KQUEUE_SERVICE = kqd_pb2.DESCRIPTOR.services_by_name["KQueueService"].full_name
# How long past its timeout wait_for_daemon may take to give up (one last try in flight).
GIVE_UP_SLACK = 2.0


def serving_status(target: str) -> int:
    """The kqueue service's health status, asked once on a new channel (no retry)."""
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=KQUEUE_SERVICE), timeout=WAIT_BOUND
        )
    return int(answer.status)


def test_returns_once_a_daemon_started_later_serves(tmp_path: Path) -> None:
    target = f"unix://{tmp_path / 'kqd.sock'}"
    # Started now, the daemon needs a good part of a second before it listens: the wait below
    # begins while there is no socket yet.
    daemon = subprocess.Popen(serve_command(target))
    try:
        kqclient.wait_for_daemon(target, timeout=WAIT_BOUND)
        assert serving_status(target) == health_pb2.HealthCheckResponse.SERVING
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(WAIT_BOUND) == 0


def test_nobody_there_is_daemon_unavailable_after_the_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(kqclient.DaemonUnavailable, match=r"did not serve within 0\.3s"):
        kqclient.wait_for_daemon(f"unix://{tmp_path / 'nobody.sock'}", timeout=0.3)
    assert time.monotonic() - started < 0.3 + GIVE_UP_SLACK


def test_a_listener_that_never_answers_is_daemon_unavailable(tmp_path: Path) -> None:
    """Connections accepted by the kernel, never by a gRPC server (a daemon stuck starting)."""
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(path))
        silent.listen(16)
        started = time.monotonic()
        with pytest.raises(kqclient.DaemonUnavailable):
            kqclient.wait_for_daemon(f"unix://{path}", timeout=0.5)
    assert time.monotonic() - started < 0.5 + GIVE_UP_SLACK
