"""The admin service and ``kqctl stats``/``kqctl queues``: they agree with the metrics, never show
a queue id, and answer only privileged callers."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import kqclient
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from kqclient import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_PROC, KQ_FILTER_USER, KQ_NOTE_EXIT, kevent

from kqd.v1 import admin_pb2, admin_pb2_grpc
from tests.conftest import WAIT_BOUND, sleeper
from tests.ops.conftest import OpsDaemon, kqctl, kqctl_json, start_ops_daemon
from tests.ops.test_metrics import deliver
from tests.security.as_user import run_as
from tests.security.users import SHARED_GROUP, TestUser


def test_stats_agree_with_the_metrics(ops_daemon: OpsDaemon) -> None:
    child = sleeper()
    try:
        with kqclient.connect(ops_daemon.target) as client:
            watched, users = client.kqueue(), client.kqueue()
            watched.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
            users.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
            stream = users.stream()
            deliver(users, stream, 4)
            metrics = ops_daemon.scrape()
            stats = kqctl_json(ops_daemon.target, "stats")[0]
    finally:
        child.kill()
        child.wait(WAIT_BOUND)

    assert stats["queues"] == metrics.get("kqd_queues") == 2
    assert stats["knotes"] == metrics.by_label("kqd_knotes", "filter")
    assert stats["wait_streams"] == metrics.get("kqd_wait_streams") == 1
    descriptors = stats["descriptors"]
    assert descriptors["for_callers"] == metrics.get("kqd_caller_descriptors")
    assert descriptors["for_callers_limit"] == metrics.get("kqd_caller_descriptors_limit")
    assert descriptors["limit"] == metrics.get("process_max_fds")
    # The kqctl call itself holds a connection: open descriptors agree within a few.
    assert abs(descriptors["open"] - metrics.get("process_open_fds")) <= 4
    assert stats["resume_log"] == {
        "events": metrics.get("kqd_resume_log_events"),
        "bytes": metrics.get("kqd_resume_log_bytes"),
    }
    assert stats["stuck_streams_closed"] == metrics.get("kqd_stuck_streams_closed_total")
    assert stats["inotify_overflows"] == metrics.get("kqd_inotify_overflows_total")
    assert stats["proc_connector_drops"] == metrics.get("kqd_proc_connector_drops_total")
    delivery = stats["delivery"]
    assert delivery["events_delivered"] == metrics.by_label("kqd_events_delivered_total", "filter")
    assert delivery["events_delivered"]["user"] == 4
    assert delivery["latency_count"] == metrics.get("kqd_delivery_latency_seconds_count") == 4
    assert delivery["latency_sum_seconds"] == pytest.approx(
        metrics.get("kqd_delivery_latency_seconds_sum")
    )
    assert delivery["resumes_refused"] == metrics.get("kqd_resume_refused_total")
    (principal,) = stats["principals"]
    assert principal["principal"] == "uid:0"
    assert principal["queues"] == 2 and principal["knotes"] == 2
    assert principal["wait_streams"] == 1


def short_hash(queue_id: str) -> str:
    return hashlib.sha256(queue_id.encode()).hexdigest()[:8]


def test_queues_shows_short_hashes_never_ids(ops_daemon: OpsDaemon) -> None:
    with kqclient.connect(ops_daemon.target) as client:
        queues = [client.kqueue() for _ in range(3)]
        queues[0].control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD) for i in range(3)], 0)
        stream = queues[1].stream()
        queues[1].control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
        deliver(queues[1], stream, 2)
        text = kqctl(ops_daemon.target, "queues")
        records = {r["queue"]: r for r in kqctl_json(ops_daemon.target, "queues")}
        stats = kqctl(ops_daemon.target, "stats")
    assert text.returncode == 0 and stats.returncode == 0, text.stderr + stats.stderr
    for kq in queues:
        for output in (text.stdout, json.dumps(records), stats.stdout):
            assert kq.queue_id not in output
            assert kq.queue_id[:6] not in output  # not even the logs' short form
        assert short_hash(kq.queue_id) in text.stdout
    assert text.stdout.splitlines()[0].split() == [
        "QUEUE", "OWNER", "KNOTES", "STREAMS", "CALLS", "LAST_SEQ", "FDS", "LEASE_LEFT"
    ]  # fmt: skip
    assert len(text.stdout.splitlines()) == 1 + 3
    first = records[short_hash(queues[0].queue_id)]
    assert first["owner"] == "uid:0"
    assert first["knotes"] == {"user": 3}
    assert first["wait_streams"] == 0 and first["last_sequence"] == 0
    assert 0 < first["lease_left_seconds"] <= first["lease_seconds"]
    streamed = records[short_hash(queues[1].queue_id)]
    assert streamed["wait_streams"] == 1 and streamed["last_sequence"] == 2
    assert streamed["lease_left_seconds"] is None  # in use: the lease does not run
    assert records[short_hash(queues[2].queue_id)]["knotes"] == {}
    assert kqctl_json(ops_daemon.target, "queues", "--owner", "uid:12345") == []


def test_reflection_lists_the_admin_service(ops_daemon: OpsDaemon) -> None:
    with grpc.insecure_channel(ops_daemon.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(stub.ServerReflectionInfo(iter([request]), timeout=WAIT_BOUND))
    names = {s.name for s in response.list_services_response.service}
    assert {"kqd.v1.AdminService", "kqd.v1.KQueueService"} <= names


@pytest.fixture
def shared_daemon(test_users: tuple[TestUser, TestUser]) -> Iterator[OpsDaemon]:
    """A root daemon whose socket the test users may use; user A privileged by its policy
    table only in the second daemon (see test_privileged_by_policy)."""
    directory = Path(tempfile.mkdtemp(prefix="kqd-ops-"))
    directory.chmod(0o755)
    ops = start_ops_daemon(directory, "--socket-group", SHARED_GROUP)
    yield ops
    assert ops.daemon.stop() == 0
    shutil.rmtree(directory, ignore_errors=True)


# Runs as the user: only modules imported before it dropped root (or readable by it) load.
ADMIN_PROGRAM = """
import grpc
from kqd.v1 import admin_pb2, admin_pb2_grpc

with grpc.insecure_channel({target!r}) as channel:
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    for method, request in (("GetStats", admin_pb2.GetStatsRequest()),
                            ("ListQueues", admin_pb2.ListQueuesRequest())):
        try:
            getattr(stub, method)(request, timeout=10)
            say(**{{method: "OK"}})
        except grpc.RpcError as error:
            say(**{{method: error.code().name, method + "_details": error.details()}})
"""


def test_unprivileged_caller_is_denied(
    shared_daemon: OpsDaemon, user_a: TestUser, tmp_path: Path
) -> None:
    target = shared_daemon.target
    with kqclient.connect(target) as client:
        client.kqueue()  # something to hide
    got = run_as(user_a, target, ADMIN_PROGRAM.format(target=target), tmp_path)
    assert got["GetStats"] == "PERMISSION_DENIED"
    assert got["ListQueues"] == "PERMISSION_DENIED"
    assert "privileged" in got["GetStats_details"]


def test_privileged_by_policy(test_users: tuple[TestUser, TestUser], tmp_path: Path) -> None:
    user_a = test_users[0]
    directory = Path(tempfile.mkdtemp(prefix="kqd-ops-"))
    directory.chmod(0o755)
    policy = directory / "privileged.toml"
    policy.write_text(f'[principal."uid:{user_a.uid}"]\nprivileged = true\n')
    policy.chmod(0o644)
    from tests.conftest import start_daemon

    daemon = start_daemon(directory, "--socket-group", SHARED_GROUP, "--policy", str(policy))
    try:
        got = run_as(user_a, daemon.target, ADMIN_PROGRAM.format(target=daemon.target), tmp_path)
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(directory, ignore_errors=True)
    assert got["GetStats"] == "OK" and got["ListQueues"] == "OK"


def test_kqctl_denied_over_plain_tcp(tmp_path: Path) -> None:
    """ "tcp:anonymous" is never privileged: kqctl stats and queues fail with exit 1 and say
    why (in JSON too)."""
    from tests.conftest import free_tcp_port, start_daemon

    target = f"127.0.0.1:{free_tcp_port()}"
    daemon = start_daemon(tmp_path, "--insecure-tcp", target=target)
    try:
        for command in ("stats", "queues"):
            done = kqctl(target, command)
            assert done.returncode == 1, done.stderr
            assert "privileged" in done.stderr and done.stdout == ""
            done = kqctl(target, "-w", "json", command)
            assert done.returncode == 1
            assert "privileged" in json.loads(done.stdout)["error"]
    finally:
        assert daemon.stop() == 0


def test_admin_stub_as_root(ops_daemon: OpsDaemon) -> None:
    """Root on the Unix socket is privileged without any policy; GetStats's shape."""
    with grpc.insecure_channel(ops_daemon.target) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        stats = stub.GetStats(admin_pb2.GetStatsRequest(), timeout=WAIT_BOUND)
    assert [c.filter for c in stats.knotes] == [
        "read", "write", "vnode", "proc", "signal", "timer", "user"
    ]  # fmt: skip
    assert stats.HasField("delivery") and stats.uptime.ToNanoseconds() > 0
    assert stats.version
