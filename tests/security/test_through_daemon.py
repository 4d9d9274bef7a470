"""A caller gets through kqd exactly what it could observe by itself, plus what policy grants.

A root daemon, and clients run as two real unprivileged users (A and B) in the socket's group:
every scenario that once let such a client reach root's objects, or another caller's queue,
now fails closed with the error the kernel would have given the user.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import kqclient
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import WAIT_BOUND, Daemon, start_daemon
from tests.security.as_user import run_as
from tests.security.users import SHARED_GROUP, TestUser, give

QUEUES_FOR_A = 3


def root_daemon(directory: Path, *extra: str) -> Daemon:
    """A root kqd whose socket the test users' shared group may use."""
    directory.chmod(0o755)  # the users must reach the socket
    return start_daemon(directory, "--socket-group", SHARED_GROUP, *extra, log_level="info")


def stop_cleanly(daemon: Daemon) -> None:
    """Stop *daemon* (exit 0, no traceback in its log) and remove its directory."""
    assert daemon.stop() == 0
    log = daemon.process.stderr.read() if daemon.process.stderr else ""
    shutil.rmtree(daemon.socket.parent, ignore_errors=True)
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def daemon(test_users: tuple[TestUser, TestUser]) -> Iterator[Daemon]:
    daemon = root_daemon(Path(tempfile.mkdtemp(prefix="kqd-daemon-")))
    yield daemon
    stop_cleanly(daemon)


@pytest.fixture
def tight_daemon(user_a: TestUser, open_dir: Path) -> Iterator[Daemon]:
    """A daemon whose policy lets user A hold only QUEUES_FOR_A queues, 2 descriptors, one
    Wait stream and 5 knotes."""
    policy = open_dir / "policy.toml"
    policy.write_text(
        f'[principal."uid:{user_a.uid}".quotas]\nqueues = {QUEUES_FOR_A}\ndescriptors = 2\n'
        "streams = 1\nknotes = 5\n"
    )
    daemon = root_daemon(Path(tempfile.mkdtemp(prefix="kqd-daemon-")), "--policy", str(policy))
    yield daemon
    stop_cleanly(daemon)


def as_a(user_a: TestUser, daemon: Daemon, program: str, cwd: Path) -> dict:
    return run_as(user_a, daemon.target, program, cwd)


def attempt(call: str) -> str:
    """A program that records what *call* (on a new queue ``kq``) did, as ``got``."""
    return f"kq = client.kqueue()\nsay(got=outcome(lambda: kq.{call}))"


def test_root_only_file_is_eacces(daemon: Daemon, user_a: TestUser, open_dir: Path) -> None:
    secret = open_dir / "secret"
    secret.write_text("root only")
    give(secret, None, 0o600)
    got = as_a(
        user_a,
        daemon,
        f"say(shadow=outcome(lambda: client.kqueue().open({str(secret)!r})))",
        open_dir,
    )
    assert got["shadow"]["error"] == "PermissionError", got


def test_no_probing_under_a_private_directory(
    daemon: Daemon, user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    private = open_dir / "b-private"
    private.mkdir()
    (private / "exists").write_text("b's")
    give(private, user_b, 0o700)
    program = f"""
    kq = client.kqueue()
    say(exists=outcome(lambda: kq.open({str(private / "exists")!r})),
        missing=outcome(lambda: kq.open({str(private / "missing")!r})))
    """
    got = as_a(user_a, daemon, program, open_dir)
    assert got["exists"]["errno"] == got["missing"]["errno"] == 13, got  # EACCES both


def test_own_file_opens_and_reports(daemon: Daemon, user_a: TestUser, open_dir: Path) -> None:
    mine = open_dir / "a-file"
    mine.write_text("12345")
    give(mine, user_a, 0o600)
    program = f"""
    kq = client.kqueue()
    fd = kq.open({str(mine)!r})
    kq.control([kevent(fd, KQ_FILTER_READ, KQ_EV_ADD)], 0)
    say(data=[ev.data for ev in kq.control(None, 1, 5)])
    """
    assert as_a(user_a, daemon, program, open_dir)["data"] == [5]


def test_a_root_process_descriptor_is_refused(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a root process's socket
        program = attempt(f"open_peer_fd({os.getpid()}, {listener.fileno()})")
        got = as_a(user_a, daemon, program, open_dir)
    assert got["got"]["error"] == "PermissionError", got


def test_the_daemon_itself_is_refused_even_to_root(daemon: Daemon) -> None:
    with kqclient.connect(daemon.target) as client, pytest.raises(PermissionError):
        client.kqueue().open_peer_fd(daemon.process.pid, 0)


def test_a_users_own_process_descriptor_is_allowed(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    program = """
    r, w = os.pipe()
    kq = client.kqueue()
    fd = kq.open_peer_fd(os.getpid(), w)
    kq.control([kevent(fd, KQ_FILTER_WRITE, KQ_EV_ADD)], 0)
    say(writable=len(kq.control(None, 1, 5)))
    """
    assert as_a(user_a, daemon, program, open_dir)["writable"] == 1


def unix_listener(path: Path, mode: int) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(mode)
    listener.listen()
    return listener


def test_a_root_only_unix_socket_is_refused(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    with unix_listener(open_dir / "root-only.sock", 0o600):
        program = attempt(f"open_connection('unix:{open_dir}/root-only.sock')")
        got = as_a(user_a, daemon, program, open_dir)
    assert got["got"]["error"] == "PermissionError", got


def test_a_unix_connection_is_made_as_the_caller(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    with unix_listener(open_dir / "open.sock", 0o666) as listener:
        program = attempt(f"open_connection('unix:{open_dir}/open.sock')")
        got = as_a(user_a, daemon, program, open_dir)
        assert "ok" in got["got"], got
        listener.settimeout(WAIT_BOUND)
        conn, _ = listener.accept()
        with conn:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    assert uid == user_a.uid, "the server sees the caller, not the daemon's root"


def test_another_principals_queue_does_not_exist(
    daemon: Daemon, user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    queue_id = as_a(user_a, daemon, "say(queue=client.kqueue(lease=30).queue_id)", open_dir)[
        "queue"
    ]
    program = f"""
    kq = client.kqueue({queue_id!r})
    say(control=outcome(lambda: kq.control(None, 1, 0)),
        wait=outcome(lambda: next(kq.stream())),
        open=outcome(lambda: kq.open('/')),
        close=outcome(lambda: client.call('CloseQueue', kq._close_call())))
    """
    got = run_as(user_b, daemon.target, program, open_dir)
    assert {v["error"] for v in got.values()} == {"QueueNotFound"}, got
    with (
        kqclient.connect(daemon.target) as root,  # root is someone else too
        pytest.raises(kqclient.QueueNotFound),
    ):
        root.kqueue(queue_id).control(None, 1, 0)
    still = as_a(
        user_a, daemon, f"say(ok=client.kqueue({queue_id!r}).control(None, 1, 0))", open_dir
    )
    assert still["ok"] == [], "the owner's queue survived the others' attempts"


def test_a_quota_hit_leaves_the_others_working(
    tight_daemon: Daemon, user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    daemon = tight_daemon
    program = f"""
    kept = [client.kqueue(lease=30) for _ in range({QUEUES_FOR_A})]
    say(over=outcome(lambda: client.kqueue(lease=30).queue_id))
    for kq in kept:
        kq.close()
    say(after_closing=outcome(lambda: client.kqueue(lease=1).queue_id))
    """
    got = as_a(user_a, daemon, program, open_dir)
    assert got["over"]["error"] == "OSError" and "queues quota" in got["over"]["message"], got
    assert "ok" in got["after_closing"], got
    other = f"say(ok=[client.kqueue(lease=1).queue_id for _ in range({QUEUES_FOR_A + 2})])"
    assert len(run_as(user_b, daemon.target, other, open_dir)["ok"]) == QUEUES_FOR_A + 2


def health_latencies(target: str, count: int) -> list[float]:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="")
        stub.Check(request, timeout=WAIT_BOUND)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            stub.Check(request, timeout=WAIT_BOUND)
            times.append(time.perf_counter() - start)
    return times


def test_a_timer_storm_leaves_another_clients_health_checks_fast(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    """User A streams 1,000 periodic 1 ms timers (its whole timer quota at the shortest period
    the policy allows); another client's health checks stay fast (median under 50 ms)."""
    storm = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"""
import os, kqclient
from kqclient import *
os.setgroups({list(user_a.groups)}); os.setresgid({user_a.gid}, {user_a.gid}, {user_a.gid})
os.setresuid({user_a.uid}, {user_a.uid}, {user_a.uid})
client = kqclient.connect({daemon.target!r})
kq = client.kqueue(lease=5)
kq.control([kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_MSECONDS, 1) for i in range(1000)], 0)
print("storming", flush=True)
for _ in kq.stream_batches():
    pass
""",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=open_dir,
    )
    try:
        assert storm.stdout is not None and storm.stdout.readline() == "storming\n"
        times = health_latencies(daemon.target, 40)
    finally:
        storm.kill()
        storm.wait(WAIT_BOUND)
    assert statistics.median(times) < 0.050, f"health checks took {sorted(times)[-5:]} s"


def test_descriptor_knote_and_stream_quotas(
    tight_daemon: Daemon, user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    program = """
    kq = client.kqueue(lease=30)
    fds = [kq.open("/") for _ in range(2)]
    say(third_fd=outcome(lambda: kq.open("/")))
    adds = [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_RECEIPT) for i in range(6)]
    receipts = kq.control(adds, 6, 0)
    say(knote_errors=[r.data for r in receipts])
    first = kq.stream()
    kq.control([kevent(0, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
    next(first)  # the first stream runs (and holds the only one A may have) while suspended
    say(second_stream=outcome(lambda: next(client.kqueue(kq.queue_id).stream())))
    """
    got = run_as(user_a, tight_daemon.target, program, open_dir)
    assert "descriptors quota" in got["third_fd"]["message"], got
    assert got["knote_errors"][:5] == [0] * 5 and got["knote_errors"][5] != 0, got
    assert "streams quota" in got["second_stream"]["message"], got
    others = """
    kq = client.kqueue(lease=1)
    say(fds=[kq.open("/") for _ in range(4)])
    """
    assert len(run_as(user_b, tight_daemon.target, others, open_dir)["fds"]) == 4
