"""Wait streams: ordered, no duplicates, no gaps, resumable; slow readers hurt nobody."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import grpc
import kqclient
import pytest
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_USER,
    KQ_NOTE_EXIT,
    KQ_NOTE_TRIGGER,
    kevent,
)

from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from tests.conftest import WAIT_BOUND, sleeper


@pytest.fixture
def client(daemon_target: str) -> Iterator[kqclient.Client]:
    with kqclient.connect(daemon_target) as c:
        yield c


def trigger_all(kq, idents) -> None:
    kq.control(
        [
            kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, 0, str(i).encode())
            for i in idents
        ],
        0,
    )


def take(stream, count: int) -> list[kevent]:
    got = []
    deadline = time.monotonic() + WAIT_BOUND
    for ev in stream:
        got.append(ev)
        if len(got) == count:
            return got
        assert time.monotonic() < deadline, f"only {len(got)} of {count} events in time"
    return got


def test_stream_delivers_in_order_with_udata(client) -> None:
    kq = client.kqueue()
    trigger_all(kq, range(50))
    got = take(kq.stream(), 50)
    assert sorted(int(ev.udata) for ev in got) == list(range(50))
    assert kq.last_sequence == 50


def test_exit_reaches_the_stream_with_status(client) -> None:
    kq = client.kqueue()
    child = sleeper()
    kq.control([kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"job-17")], 0)
    child.kill()
    ev = take(kq.stream(), 1)[0]
    assert (ev.ident, ev.fflags, ev.data, ev.udata) == (child.pid, KQ_NOTE_EXIT, 9, b"job-17")
    child.wait(WAIT_BOUND)


def test_resume_after_a_sequence_replays_what_followed(client) -> None:
    kq = client.kqueue()
    trigger_all(kq, range(10))
    first = take(kq.stream(), 10)
    again = client.kqueue(kq.queue_id)  # another handle, as after a client restart
    replay = take(again.stream(after=4), 6)
    assert replay == first[4:], "resume after 4 gives exactly events 5..10"


def test_killed_client_resumes_without_loss_or_duplicates(client, daemon_target) -> None:
    kq = client.kqueue()
    trigger_all(kq, range(100))
    reader = textwrap.dedent(f"""
        import kqclient, os
        with kqclient.connect({daemon_target!r}) as c:
            for ev in c.kqueue({kq.queue_id!r}).stream():
                print(ev.udata.decode(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = [proc.stdout.readline().strip() for _ in range(30)]
    proc.kill()  # cut mid-flight: it may have received more than it printed
    proc.wait(WAIT_BOUND)
    rest = take(kq.stream(after=30), 70)
    assert seen + [ev.udata.decode() for ev in rest] == [
        ev.udata.decode() for ev in take(client.kqueue(kq.queue_id).stream(after=0), 100)
    ]
    assert len(set(seen) | {ev.udata for ev in rest}) == 100


def test_resume_point_too_old_is_an_explicit_error(client) -> None:
    kq = client.kqueue()
    idents = range(5000)  # more than the daemon keeps
    trigger_all(kq, idents)
    take(kq.stream(), 5000)
    with pytest.raises(kqclient.ResumeGap) as info:
        next(client.kqueue(kq.queue_id).stream(after=1))
    assert info.value.oldest is not None and info.value.oldest > 2


def test_heartbeat_while_quiet(daemon_target, client) -> None:
    kq = client.kqueue()
    with grpc.insecure_channel(daemon_target) as channel:
        stub = kqd_pb2_grpc.KQueueServiceStub(channel)
        responses = stub.Wait(kqd_pb2.WaitRequest(queue_id=kq.queue_id), timeout=WAIT_BOUND)
        first = next(responses)
        assert list(first.events) == [] and first.last_sequence == 0
        responses.cancel()


def test_stalled_reader_does_not_slow_another_client(client, daemon_target) -> None:
    stalled = client.kqueue()
    trigger_all(stalled, range(2000))
    with grpc.insecure_channel(daemon_target) as channel:
        stub = kqd_pb2_grpc.KQueueServiceStub(channel)
        stuck = stub.Wait(kqd_pb2.WaitRequest(queue_id=stalled.queue_id, max_batch=1))
        next(stuck)  # open, then never read again
        other = client.kqueue()
        for round_ in range(20):
            trigger_all(other, [round_])
            assert len(other.control(None, 1, WAIT_BOUND)) == 1
        stuck.cancel()


def test_many_clients_no_cross_talk(daemon_target) -> None:
    errors: list[str] = []

    def one(index: int) -> None:
        try:
            with kqclient.connect(daemon_target) as c:
                kq = c.kqueue()
                kq.control(
                    [
                        kevent(
                            1,
                            KQ_FILTER_USER,
                            KQ_EV_ADD | KQ_EV_CLEAR,
                            KQ_NOTE_TRIGGER,
                            index,
                            str(index).encode(),
                        )
                    ],
                    0,
                )
                events = kq.control(None, 8, WAIT_BOUND)
                if [(e.ident, e.data, e.udata) for e in events] != [
                    (1, index, str(index).encode())
                ]:
                    errors.append(f"client {index} got {events}")
                kq.close()
        except Exception as exc:
            errors.append(f"client {index}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_BOUND * 3)
    assert not errors, errors[:5]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_stalled_reader_does_not_grow_daemon_memory(tmp_path) -> None:
    from tests.conftest import start_daemon

    daemon = start_daemon(tmp_path)
    try:
        with (
            kqclient.connect(daemon.target) as client,
            grpc.insecure_channel(daemon.target) as channel,
        ):
            kq = client.kqueue()
            kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(100)], 0)
            stub = kqd_pb2_grpc.KQueueServiceStub(channel)
            stuck = stub.Wait(kqd_pb2.WaitRequest(queue_id=kq.queue_id, max_batch=1))
            next(stuck)  # open, then never read again
            triggers = [
                kevent(i, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER, 0, b"x" * 1000) for i in range(100)
            ]
            for _ in range(30):  # warm up allocator pools
                kq.control(triggers, 0)
            before = _rss_kib(daemon.process.pid)
            for _ in range(500):  # 50,000 triggers, 50 MB of udata sent
                kq.control(triggers, 0)
            grown = _rss_kib(daemon.process.pid) - before
            stuck.cancel()
        assert grown < 20 * 1024, f"daemon RSS grew by {grown} KiB under a stalled reader"
    finally:
        assert daemon.stop() == 0
