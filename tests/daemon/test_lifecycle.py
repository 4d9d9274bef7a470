"""The daemon's life: health, reflection, leases, clean shutdown."""

from __future__ import annotations

import subprocess
import sys

import grpc
import kqclient
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kqclient import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent

from tests.conftest import WAIT_BOUND, sleeper, start_daemon


def test_health_serving(daemon_target) -> None:
    with grpc.insecure_channel(daemon_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "kqd.v1.KQueueService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(daemon_target) -> None:
    with grpc.insecure_channel(daemon_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in response.list_services_response.service}
    assert {"kqd.v1.KQueueService", "grpc.health.v1.Health"} <= names


def test_sigterm_ends_streams_cleanly_and_removes_the_socket(tmp_path) -> None:
    daemon = start_daemon(tmp_path, "--grace", "2")
    with grpc.insecure_channel(daemon.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_BOUND)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        with kqclient.connect(daemon.target) as client:
            kq = client.kqueue()
            from kqd.v1 import kqd_pb2, kqd_pb2_grpc

            stream = kqd_pb2_grpc.KQueueServiceStub(channel).Wait(
                kqd_pb2.WaitRequest(queue_id=kq.queue_id), timeout=WAIT_BOUND
            )
            next(stream)  # the first heartbeat: the stream is open
            daemon.process.send_signal(15)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert list(stream) == [], "the stream ends cleanly (status OK), nothing else"
    assert daemon.process.wait(WAIT_BOUND) == 0
    assert not daemon.socket.exists(), "the socket is removed on exit"


def test_queue_outlives_its_connection_for_the_lease(daemon_target) -> None:
    child = sleeper()
    with kqclient.connect(daemon_target) as first:
        kq = first.kqueue()
        kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"kept")], 0)
        queue_id = kq.queue_id
    child.kill()  # exits while nobody is connected
    child.wait(WAIT_BOUND)
    with kqclient.connect(daemon_target) as second:
        events = second.kqueue(queue_id).control(None, 4, WAIT_BOUND)
    assert [(e.ident, e.udata) for e in events] == [(child.pid, b"kept")]


def test_lease_expiry_closes_the_queue(tmp_path) -> None:
    daemon = start_daemon(tmp_path, "--lease", "0.5", log_level="debug")
    try:
        with kqclient.connect(daemon.target) as client:
            kq = client.kqueue()
            kq.open(str(tmp_path))
            assert daemon.wait_for_log("idle for its lease"), "the queue outlived its lease"
            with pytest.raises(kqclient.QueueNotFound):
                kq.control(None, 1, 0)
    finally:
        assert daemon.stop() == 0


def test_bad_listen_address_fails_with_a_message(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kqd", "serve", "--listen", "256.1.1.1:99999"],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert result.returncode == 2
    assert "cannot listen on 256.1.1.1:99999" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_daemon_on_a_busy_socket_refuses(daemon_target) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kqd", "serve", "--listen", daemon_target],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert result.returncode == 1
    assert "already listens there" in result.stderr
    with kqclient.connect(daemon_target) as client:  # the first daemon still serves
        assert client.kqueue().control(None, 1, 0) == []
