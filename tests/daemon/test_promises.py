"""The README's promises as a user meets them: leases, closes and shutdowns under a waiting call,
resume positions, descriptor bounds, and what ``kqd serve`` says about its addresses."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import kqclient
import pytest
from grpc_reflection.v1alpha import reflection_pb2
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_USER,
    KQ_NOTE_EXIT,
    KQ_NOTE_TRIGGER,
    kevent,
)

from kqd.daemon.reflection import V1_SERVICE_NAME
from kqd.daemon.server import serve_command
from tests.conftest import WAIT_BOUND, start_daemon


def in_thread(call: Callable[[], Any]) -> Callable[[float], Any]:
    """Run *call* in a thread; the returned function joins it (bounded) and gives its result
    or raises its exception."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(bound: float) -> Any:
        thread.join(bound)
        assert not thread.is_alive(), f"the call did not end within {bound}s"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return join


def after_a_round_trip(queue: kqclient.RemoteKqueue) -> None:
    """One more call on *queue*'s channel: by its answer, a call started before it has (almost
    certainly) reached the daemon. Tests that use this pass either way; they only prove more
    when the earlier call was already waiting."""
    queue.control(None, 0, 0)


def test_a_wait_longer_than_the_lease_keeps_its_queue(tmp_path: Path) -> None:
    """The README's first example: pwait on a process that outlives the lease."""
    daemon = start_daemon(tmp_path, "--lease", "1")
    try:
        with kqclient.connect(daemon.target) as client:
            kq = client.kqueue()
            # Outlives the lease by far; the exit is what ends the wait, not a clock in the test.
            child = subprocess.Popen(["sleep", "3"])
            kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
            events = kq.control(None, 1, WAIT_BOUND + 3)
            assert [(e.ident, e.data) for e in events] == [(child.pid, 0)]
            child.wait(WAIT_BOUND)
            # The queue is still there, and idle from now on: its lease then ends it.
            assert kq.control(None, 1, 0) == []
    finally:
        assert daemon.stop() == 0


def test_a_stream_longer_than_the_lease_keeps_its_queue(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--lease", "1")
    try:
        with kqclient.connect(daemon.target) as client:
            kq = client.kqueue()
            child = subprocess.Popen(["sleep", "3"])
            kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"x")], 0)
            ev = next(iter(kq.stream()))
            assert (ev.ident, ev.udata) == (child.pid, b"x")
            child.wait(WAIT_BOUND)
    finally:
        assert daemon.stop() == 0


def test_close_racing_a_wait_ends_the_wait_at_once(daemon_target: str) -> None:
    with kqclient.connect(daemon_target) as client:
        kq = client.kqueue()
        waiting = in_thread(lambda: kq.control(None, 1, None))
        other = client.kqueue(kq.queue_id)
        after_a_round_trip(other)
        other.close()
        with pytest.raises(kqclient.QueueNotFound):
            waiting(WAIT_BOUND)


def test_close_ends_a_wait_stream_with_not_found(daemon_target: str) -> None:
    with kqclient.connect(daemon_target) as client:
        kq = client.kqueue()
        stream = kq.stream()
        draining = in_thread(lambda: list(stream))
        client.kqueue(kq.queue_id).close()
        with pytest.raises(kqclient.QueueNotFound):
            draining(WAIT_BOUND)


def test_sigterm_ends_a_pending_wait_promptly(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, "--grace", "60", log_level="info")
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        waiting = in_thread(lambda: kq.control(None, 1, None))
        after_a_round_trip(client.kqueue(kq.queue_id))
        daemon.process.send_signal(15)
        with pytest.raises(kqclient.DaemonUnavailable):
            waiting(WAIT_BOUND)
    # Well inside the 60 s grace period: nothing is left to wait for.
    assert daemon.process.wait(WAIT_BOUND) == 0
    log = daemon.process.stderr.read() if daemon.process.stderr else ""
    assert "Traceback" not in log and "Cancelling all calls" not in log, log


def trigger(kq: kqclient.RemoteKqueue, idents: range) -> None:
    kq.control(
        [
            kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, 0, str(i).encode())
            for i in idents
        ],
        0,
    )


def test_last_sequence_is_the_last_event_yielded(daemon_target: str) -> None:
    """Handle 1 of 10 events, save last_sequence, resume: the other 9 come."""
    with kqclient.connect(daemon_target) as client:
        kq = client.kqueue()
        trigger(kq, range(10))
        stream = kq.stream()
        first = next(stream)
        saved = kq.last_sequence
        assert saved == 1, "last_sequence is the number of the event just yielded"
        stream.close()
        again = client.kqueue(kq.queue_id)
        rest = [ev for _, ev in zip(range(9), again.stream(after=saved), strict=False)]
        assert [first, *rest] == sorted([first, *rest], key=lambda ev: ev.ident)
        assert {int(ev.udata) for ev in [first, *rest]} == set(range(10))
        assert again.last_sequence == 10


def test_closed_queues_give_their_descriptors_back(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    fds = Path(f"/proc/{daemon.process.pid}/fd")
    try:
        with kqclient.connect(daemon.target) as client:
            client.kqueue().close()  # warm up: the first queue creates process-wide sources
            baseline = len(list(fds.iterdir()))
            for _ in range(2000):
                kq = client.kqueue()
                kq.open(str(tmp_path))
                trigger(kq, range(1))
                kq.close()
            # A large queue's knotes go over a few loop turns after CloseQueue answers.
            deadline = time.monotonic() + WAIT_BOUND
            while (after := len(list(fds.iterdir()))) > baseline and time.monotonic() < deadline:
                time.sleep(0.01)
        assert after <= baseline, f"{after - baseline} descriptors kept by 2,000 closed queues"
    finally:
        assert daemon.stop() == 0


def test_reflection_v1_is_served(daemon_target: str) -> None:
    method = f"/{V1_SERVICE_NAME}/ServerReflectionInfo"
    with grpc.insecure_channel(daemon_target) as channel:
        call = channel.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        response = next(call(iter([request]), timeout=WAIT_BOUND))
    names = {s.name for s in response.list_services_response.service}
    assert {"kqd.v1.KQueueService", "grpc.health.v1.Health", V1_SERVICE_NAME} <= names


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """``kqd serve`` that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "kqd", "serve", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:", "nonsense"])
def test_an_impossible_port_is_refused(address: str) -> None:
    result = serve("--listen", address, "--insecure-tcp")
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {address}" in result.stderr
    assert "Failed to add port" not in result.stderr, "only kqd's own message"


def test_a_socket_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    result = serve("--listen", f"unix://{missing}/kqd.sock")
    assert result.returncode == 2, result.stderr
    assert f"directory {missing} does not exist" in result.stderr
    assert not (tmp_path / "no").exists(), "no directory tree was created"


def test_port_zero_logs_the_port_it_got(tmp_path: Path) -> None:
    process = subprocess.Popen(
        serve_command("127.0.0.1:0", "--insecure-tcp", log_level="info"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + WAIT_BOUND
        for line in process.stderr:
            if "serving on" in line:
                break
            assert time.monotonic() < deadline, "no 'serving on' line in time"
        found = re.search(r"serving on 127\.0\.0\.1:(\d+)", line)
        assert found and int(found.group(1)) > 0, line
        kqclient.wait_for_daemon(f"127.0.0.1:{found.group(1)}", timeout=WAIT_BOUND)
    finally:
        process.terminate()
        assert process.wait(WAIT_BOUND) == 0
