"""The Prometheus endpoint of ``kqd serve --metrics-listen``: values after a known workload, the
latency histogram, resume refusals, bounded labels, HTTP answers and the cost of a scrape."""

from __future__ import annotations

import contextlib
import re
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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

from kqd.daemon.metrics import FILTER_LABELS
from kqd.daemon.metrics_delivery import LATENCY_BUCKETS
from kqd.daemon.server import serve_command
from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from tests.conftest import WAIT_BOUND, free_tcp_port, sleeper
from tests.ops.conftest import OpsDaemon, fetch, scrape, start_ops_daemon

PROC_KNOTES = 5
USER_EVENTS = 7


@contextlib.contextmanager
def sleepers(count: int) -> Iterator[list[subprocess.Popen]]:
    children = [sleeper() for _ in range(count)]
    try:
        yield children
    finally:
        for child in children:
            child.kill()
            child.wait(WAIT_BOUND)


def deliver(kq: kqclient.RemoteKqueue, stream: Iterator[kevent], count: int) -> None:
    """Trigger the USER knote 1 of *kq* *count* times, taking each event from *stream* before
    the next trigger (triggers in a row would merge into one event)."""
    for _ in range(count):
        kq.control([kevent(1, KQ_FILTER_USER, 0, KQ_NOTE_TRIGGER)], 0)
        assert next(stream).ident == 1


def test_known_workload(ops_daemon: OpsDaemon) -> None:
    """3 queues, 5 PROC knotes, 7 USER events through one Wait stream."""
    with sleepers(PROC_KNOTES) as children, kqclient.connect(ops_daemon.target) as client:
        procs, users, _empty = client.kqueue(), client.kqueue(), client.kqueue()
        procs.control([kevent(c.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for c in children], 0)
        users.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
        stream = users.stream()
        deliver(users, stream, USER_EVENTS)
        got = ops_daemon.scrape_when(
            lambda got: got.get("kqd_delivery_latency_seconds_count") == USER_EVENTS
        )

    assert got.get("kqd_queues") == 3
    knotes = got.by_label("kqd_knotes", "filter")
    assert knotes == {**dict.fromkeys(FILTER_LABELS.values(), 0.0), "proc": 5, "user": 1}
    assert got.get("kqd_wait_streams") == 1
    delivered = got.by_label("kqd_events_delivered_total", "filter")
    assert delivered["user"] == USER_EVENTS and sum(delivered.values()) == USER_EVENTS
    assert got.get("kqd_delivery_latency_seconds_count") == USER_EVENTS
    assert got.get("kqd_delivery_latency_seconds_bucket", le="+Inf") == USER_EVENTS
    assert 0 < got.get("kqd_delivery_latency_seconds_sum") < USER_EVENTS * WAIT_BOUND
    assert got.get("kqd_resume_log_events") == USER_EVENTS
    assert got.get("kqd_resume_log_bytes") > 0
    # Each queue holds 3 descriptors of its own, each PROC knote a pidfd.
    assert got.get("kqd_caller_descriptors") == 3 * 3 + PROC_KNOTES
    assert got.get("process_open_fds") >= got.get("kqd_caller_descriptors")
    assert got.get("process_max_fds") > got.get("kqd_caller_descriptors_limit") > 0
    rpcs = "kqd_rpcs_total"
    kqueue_service = "kqd.v1.KQueueService"
    assert got.get(rpcs, service=kqueue_service, method="CreateQueue", code="OK") == 3
    # 1 PROC registration, 1 USER registration and 7 triggers, all through Kevent.
    assert got.get(rpcs, service=kqueue_service, method="Kevent", code="OK") == 2 + USER_EVENTS
    duration = "kqd_rpc_duration_seconds_count"
    assert got.get(duration, service=kqueue_service, method="CreateQueue") == 3
    for counter in (
        "kqd_stuck_streams_closed_total",
        "kqd_resume_refused_total",
        "kqd_inotify_overflows_total",
        "kqd_proc_connector_drops_total",
    ):
        assert got.get(counter) == 0, counter
    assert got.get("kqd_build_info", version=kqd_version()) == 1


def kqd_version() -> str:
    from kqd.daemon.metrics import version

    return version()


def test_latency_buckets_count_every_event(ops_daemon: OpsDaemon) -> None:
    """The histogram's buckets are cumulative, end with +Inf = count, and two streams on one
    queue each count every event they send."""
    with kqclient.connect(ops_daemon.target) as client:
        kq = client.kqueue()
        kq.control([kevent(1, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR)], 0)
        first = kq.stream()
        deliver(kq, first, 3)
        second = client.kqueue(kq.queue_id).stream(after=0)  # replays 1..3 from the log
        for _ in range(3):
            next(second)
        got = ops_daemon.scrape()
    buckets = [
        got.get("kqd_delivery_latency_seconds_bucket", le=str(bound)) for bound in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets)
    assert got.get("kqd_delivery_latency_seconds_bucket", le="+Inf") == 6
    assert got.get("kqd_delivery_latency_seconds_count") == 6
    assert got.get("kqd_events_delivered_total", filter="user") == 6
    assert got.get("kqd_wait_streams") == 2


def test_resume_refused_and_log_size(ops_daemon: OpsDaemon) -> None:
    """A resume point older than the log is refused (OUT_OF_RANGE) and counted; the log keeps
    its 4096 events."""
    events = 4200
    with kqclient.connect(ops_daemon.target) as client:
        kq = client.kqueue()
        triggered = [
            kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER)
            for i in range(events)
        ]
        kq.control(triggered, 0)
        seen = 0
        for batch in kq.stream_batches(max_batch=1000):
            seen += len(batch)
            if seen >= events:
                break
        with grpc.insecure_channel(ops_daemon.target) as channel:
            stub = kqd_pb2_grpc.KQueueServiceStub(channel)
            request = kqd_pb2.WaitRequest(queue_id=kq.queue_id, after_sequence=1)
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.Wait(request, timeout=WAIT_BOUND))
        assert refused.value.code() == grpc.StatusCode.OUT_OF_RANGE
        got = ops_daemon.scrape_when(lambda got: got.get("kqd_resume_refused_total") == 1)
    assert got.get("kqd_resume_refused_total") == 1
    wait = {"service": "kqd.v1.KQueueService", "method": "Wait", "code": "OUT_OF_RANGE"}
    assert got.get("kqd_rpcs_total", **wait) == 1
    assert got.get("kqd_resume_log_events") == 4096
    assert got.get("kqd_events_delivered_total", filter="user") == events
    assert got.get("kqd_delivery_latency_seconds_count") == events


def test_labels_are_a_fixed_set(ops_daemon: OpsDaemon) -> None:
    """No queue id, pid, path or principal ever shows: every label value is from a fixed
    set, whatever the workload."""
    with sleepers(1) as children, kqclient.connect(ops_daemon.target) as client:
        kq = client.kqueue()
        kq.control([kevent(children[0].pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
        fd = kq.open(str(Path(__file__).resolve()))
        with pytest.raises(FileNotFoundError):
            kq.open("/nonexistent/kqd-ops")
        with pytest.raises(kqclient.QueueNotFound):
            client.kqueue("no-such-queue").control(None, 0)
        got = ops_daemon.scrape()
        assert kq.queue_id not in got.text
        assert kq.queue_id[:6] not in got.text
        assert f'"{children[0].pid}"' not in got.text
        assert "kqd-ops" not in got.text and "uid:" not in got.text
        kq.close_fd(fd)
    label_values = {
        "filter": set(FILTER_LABELS.values()),
        "code": {code.name for code in grpc.StatusCode},
        "service": {"kqd.v1.KQueueService", "kqd.v1.AdminService", "grpc.health.v1.Health"},
        "le": None,  # bucket bounds
        "version": None,
    }
    for (name, labels), _value in got.values.items():
        for label, value in labels:
            assert label in label_values or label == "method", f"{name}: label {label}"
            allowed = label_values.get(label)
            if allowed is not None:
                assert value in allowed, f"{name}: {label}={value}"
            if label == "method":
                assert re.fullmatch(r"[A-Z][A-Za-z]+", value), f"{name}: method {value}"


def test_http_answers(ops_daemon: OpsDaemon) -> None:
    url = f"http://127.0.0.1:{ops_daemon.port}"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{url}/", timeout=WAIT_BOUND)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(f"{url}/metrics", data=b"x", timeout=WAIT_BOUND)
    assert posted.value.code == 405
    request = urllib.request.Request(
        f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=WAIT_BOUND) as answer:
        assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
        assert answer.read().decode().endswith("# EOF\n")


def test_metrics_port_in_use_is_refused(ops_daemon: OpsDaemon, tmp_path: Path) -> None:
    other = f"unix://{tmp_path / 'other.sock'}"
    done = subprocess.run(
        serve_command(other, "--metrics-listen", f"127.0.0.1:{ops_daemon.port}"),
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND,
    )
    assert done.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{ops_daemon.port}" in done.stderr


def test_no_metrics_port_by_default(tmp_path: Path) -> None:
    """Without --metrics-listen nothing listens for HTTP, and the per-event counters stay
    off (the admin service says so)."""
    from tests.conftest import start_daemon
    from tests.ops.conftest import kqctl_json

    daemon = start_daemon(tmp_path)
    try:
        stats = kqctl_json(daemon.target, "stats")[0]
        assert stats["delivery"] is None
        assert stats["queues"] == 0
    finally:
        assert daemon.stop() == 0


def test_scrape_under_load_is_cheap(tmp_path: Path) -> None:
    """20,000 knotes in 40 queues and a stream at full speed: report what a scrape costs
    (a generous bound only: wall-clock times on a shared 2-core machine vary)."""
    ops = start_ops_daemon(tmp_path)
    stop = threading.Event()
    try:
        with kqclient.connect(ops.target) as client:
            for _ in range(40):
                kq = client.kqueue()
                kq.control(
                    [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(500)], 0
                )
            hot = client.kqueue()
            hot.control(
                [kevent(i, KQ_FILTER_USER, KQ_EV_ADD, KQ_NOTE_TRIGGER) for i in range(100)], 0
            )

            def stream() -> None:
                for _batch in hot.stream_batches():
                    if stop.is_set():
                        return

            reader = threading.Thread(target=stream, daemon=True)
            reader.start()
            time.sleep(0.3)
            fetch(ops.port)  # warm-up
            times = []
            for _ in range(20):
                start = time.perf_counter()
                fetch(ops.port)
                times.append(time.perf_counter() - start)
            got = scrape(ops.port)
            stop.set()
            reader.join(WAIT_BOUND)  # before its client closes under it
        assert got.get("kqd_knotes", filter="user") == 40 * 500 + 100
        assert got.get("kqd_events_delivered_total", filter="user") > 0
        median = statistics.median(times)
        print(f"\nscrape under load: median {median * 1e3:.2f} ms, max {max(times) * 1e3:.2f} ms")
        assert median < 0.5, f"a scrape took {median * 1e3:.1f} ms (median of 20)"
    finally:
        stop.set()
        ops.daemon.stop()


def test_metrics_listen_takes_a_bare_port(tmp_path: Path) -> None:
    """A port alone means loopback, and the log names the address bound."""
    from tests.conftest import start_daemon

    port = free_tcp_port()
    daemon = start_daemon(tmp_path, "--metrics-listen", str(port), log_level="info")
    try:
        assert daemon.wait_for_log(f"metrics on http://127.0.0.1:{port}/metrics")
        assert scrape(port).get("kqd_queues") == 0
    finally:
        assert daemon.stop() == 0


def test_every_series_is_documented(ops_daemon: OpsDaemon) -> None:
    """docs/operate.md lists every kqd_ series the endpoint serves, and no other."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "operate.md").read_text()
    with kqclient.connect(ops_daemon.target) as client:
        client.kqueue().close()  # an RPC, so that the RPC series have samples
    served = {re.sub(r"_(bucket|count|sum)$", "", name) for name, _ in ops_daemon.scrape().values}
    served = {name for name in served if name.startswith("kqd_")}
    documented = set(re.findall(r"`(kqd_[a-z_]+)`", docs))
    assert served == documented
