"""SIGTERM while clients hold Wait streams: a clean stop, nothing in the log at ERROR and no
traceback, and each stream ends as service.py documents (status OK at shutdown), or, for a
client that stopped reading, when the grace period is over."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import kqclient

from kqd.core import KQ_EV_ADD, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent
from kqd.v1 import kqd_pb2
from tests.conftest import WAIT_BOUND, Daemon, start_daemon


def _stop_and_read_log(daemon: Daemon) -> str:
    assert daemon.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"
    assert daemon.process.stderr is not None
    return daemon.process.stderr.read()


def _assert_clean(log: str) -> None:
    bad = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    assert not bad, "the daemon logged errors at shutdown:\n" + log
    assert "kqd stopped" in log, log


def _drain(responses: Iterator[kqd_pb2.WaitResponse], ended: list[object]) -> None:
    """Read a Wait stream to its end; what ended it goes into *ended*."""
    try:
        for _ in responses:
            pass
        ended.append(grpc.StatusCode.OK)
    except grpc.RpcError as error:
        ended.append(error.code())


def test_sigterm_with_open_wait_streams_is_clean(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, log_level="info")
    with kqclient.connect(daemon.target) as client:
        idle = client.kqueue()
        busy = client.kqueue()
        # Always ready, with large udata: a stream nobody reads fills its flow-control window
        # and the daemon's write blocks there until the grace period ends it.
        busy.control(
            [
                kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER, 0, b"u" * 1000)
                for i in range(500)
            ],
            0,
        )
        watching = client.stub.Wait(kqd_pb2.WaitRequest(queue_id=idle.queue_id))
        next(watching)  # established
        stalled = client.stub.Wait(kqd_pb2.WaitRequest(queue_id=busy.queue_id))
        next(stalled)  # established; never read again
        ended: list[object] = []
        reader = threading.Thread(target=_drain, args=(watching, ended), daemon=True)
        reader.start()

        log = _stop_and_read_log(daemon)

        reader.join(WAIT_BOUND)
        assert not reader.is_alive(), f"the open stream did not end within {WAIT_BOUND}s"
        assert ended == [grpc.StatusCode.OK], f"a Wait stream ends with OK at shutdown: {ended}"
        stalled.cancel()
    _assert_clean(log)


def test_sigterm_with_a_client_library_stream_is_clean(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, log_level="info")
    client = kqclient.connect(daemon.target)
    kq = client.kqueue()
    started = threading.Event()

    def consume() -> None:
        stream = kq.stream()
        started.set()
        try:
            for _ in stream:
                pass
        except Exception:  # the daemon is gone; how the library says so is its own concern
            pass

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert started.wait(WAIT_BOUND), "the stream did not start"
    kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER)], 0)
    try:
        log = _stop_and_read_log(daemon)
    finally:
        client.close()
    _assert_clean(log)


def test_sigterm_with_a_session_not_started_yet_is_clean(tmp_path: Path) -> None:
    """A Session whose client has not sent its start message waits on no queue: shutdown
    ends it with UNAVAILABLE instead of leaving it to gRPC's cancellation at the end of the
    grace period (which gRPC logs as an error)."""
    daemon = start_daemon(tmp_path, log_level="info")
    with kqclient.connect(daemon.target) as client:
        never = threading.Event()

        def no_requests() -> Iterator[kqd_pb2.SessionRequest]:
            never.wait()  # until the test ends: then half-close, having sent nothing
            yield from ()

        call = client.stub.Session(no_requests())
        ended: list[object] = []
        reader = threading.Thread(target=_drain, args=(call, ended), daemon=True)
        reader.start()
        # A round trip on the same connection after it: the Session has reached the daemon.
        client.kqueue().close()
        log = _stop_and_read_log(daemon)
        reader.join(WAIT_BOUND)
        assert ended == [grpc.StatusCode.UNAVAILABLE], ended
        never.set()
    _assert_clean(log)
