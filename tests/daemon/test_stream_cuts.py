"""Wait streams across broken connections and overlapping streams: every event exactly once.

The delivery promise (proto/kqd/v1/kqd.proto, WaitRequest): each event of a queue has a
sequence number, 1, 2, 3, ...; a client that resumes after the last number it received gets
everything after it, including what was sent but never arrived; every Wait stream of a queue
sees the same numbers for the same events. ``kq.stream()`` resumes by itself and keeps
``kq.last_sequence`` at the number of the last event it yielded.

- Through a TCP proxy that cuts its connections at random bytes of the daemon's output (closing
  both sides, or only the client's while the daemon's stream goes on sending into the void), a
  consumer's ``kq.stream()`` receives each event a producer triggers exactly once, numbered
  without gaps.
- Two overlapping Wait streams on one queue each receive every event.
- A consumer that drops its stream after every event and resumes from ``last_sequence`` (same
  handle or a new one) loses nothing and repeats nothing.

Each test runs its own daemon with its log captured: no ERROR line and no traceback in it.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import kqclient
import pytest
from kqclient import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent

from kqd.v1 import kqd_pb2, kqd_pb2_grpc
from tests.conftest import WAIT_BOUND, Daemon, start_daemon

CUTS = 50  # connections the proxy cuts in the cut test
SEED = 20240917  # the proxy's cut points: the same on every run
STREAM_BOUND = 60.0  # seconds for the whole cut test (it takes a few)


class LoggedDaemon:
    """A ``kqd serve`` on a Unix socket and on 127.0.0.1 (a free port it picks), its log read
    by a thread: lines kept for the check at the end."""

    def __init__(self, directory: Path) -> None:
        self.daemon: Daemon = start_daemon(
            directory, "--listen", "127.0.0.1:0", "--insecure-tcp", log_level="info"
        )
        self.log: list[str] = []
        stderr = self.daemon.process.stderr
        assert stderr is not None
        for line in stderr:
            self.log.append(line)
            found = re.search(r"kqd serving on .*127\.0\.0\.1:(\d+)", line)
            if found:
                self.tcp_port = int(found.group(1))
                break
        else:
            pytest.fail(f"kqd serve never logged its TCP port: {''.join(self.log)}")
        self._reader = threading.Thread(target=self._read, args=(stderr,), daemon=True)
        self._reader.start()

    def _read(self, stderr: Iterator[str]) -> None:
        for line in stderr:
            self.log.append(line)

    @property
    def target(self) -> str:
        return self.daemon.target

    def stop_and_check_log(self) -> None:
        """Stop the daemon; it must exit with 0 and have logged no ERROR and no traceback."""
        assert self.daemon.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"
        self._reader.join(WAIT_BOUND)
        bad = [line for line in self.log if " ERROR " in line or "Traceback" in line]
        assert not bad, "the daemon logged errors:\n" + "".join(self.log[-50:])


@pytest.fixture
def logged_daemon(tmp_path: Path) -> Iterator[LoggedDaemon]:
    daemon = LoggedDaemon(tmp_path)
    try:
        yield daemon
    finally:
        if daemon.daemon.process.poll() is None:
            daemon.stop_and_check_log()


class _Pipe:
    """One proxied connection: the client's socket and the daemon's."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.black_hole = False  # the client's side is cut, the daemon's kept and drained
        self._open_pumps = 2
        self._lock = threading.Lock()

    def cut_client(self) -> None:
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)  # also wakes a pump blocked in recv

    def cut(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump_done(self) -> None:
        with self._lock:
            self._open_pumps -= 1
            last = self._open_pumps == 0
        if last:
            self.client.close()
            self.upstream.close()


class CuttingProxy:
    """127.0.0.1:``port`` forwarded to the daemon at 127.0.0.1:*upstream_port*.

    Each of the first *cuts* connections is cut after a random number of bytes from the daemon,
    in the middle of whatever it was sending (its HTTP/2 preamble, a frame, a message). Half of
    the cuts close both sides; the other half close only the client's side and keep draining
    the daemon's, as a network that drops packets silently would: the daemon's stream goes on
    sending events that never arrive, until the proxy closes. Cut points and kinds are seeded:
    the same on every run. Later connections are left alone, so the test can finish."""

    def __init__(self, upstream_port: int, cuts: int, seed: int) -> None:
        self.upstream_port = upstream_port
        self.cuts_left = cuts
        self.cuts_done = 0
        self.connections = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop accepting and break every connection, black holes included."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for pipe in self._pipes:
                pipe.cut()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            pipe = _Pipe(client, upstream)
            with self._lock:
                self.connections += 1
                budget = None
                if self.cuts_left > 0:
                    self.cuts_left -= 1
                    budget = self._random.randint(1, 1500)
                    pipe.black_hole = self._random.random() < 0.5
                self._pipes.append(pipe)
            threading.Thread(target=self._down, args=(pipe, budget), daemon=True).start()
            threading.Thread(target=self._up, args=(pipe,), daemon=True).start()

    def _down(self, pipe: _Pipe, budget: int | None) -> None:
        """The daemon's bytes to the client; with a *budget*, cut after that many."""
        forwarding = True
        try:
            while data := pipe.upstream.recv(65536):
                if not forwarding:
                    continue  # a black hole: drained, dropped
                if budget is not None and len(data) >= budget:
                    pipe.client.sendall(data[:budget])
                    with self._lock:
                        self.cuts_done += 1
                    pipe.cut_client()
                    if not pipe.black_hole:
                        break
                    forwarding = False
                    continue
                if budget is not None:
                    budget -= len(data)
                pipe.client.sendall(data)
        except OSError:
            pass
        finally:
            pipe.cut()
            pipe.pump_done()

    def _up(self, pipe: _Pipe) -> None:
        """The client's bytes to the daemon, until the client's side ends."""
        try:
            while data := pipe.client.recv(65536):
                pipe.upstream.sendall(data)
        except OSError:
            pass
        finally:
            if pipe.black_hole:
                pipe.cut_client()  # the daemon's side stays open until close()
            else:
                pipe.cut()
            pipe.pump_done()


def user_event(ident: int) -> kevent:
    """A USER knote, edge-triggered, triggered now; udata = the ident in decimal."""
    return kevent(
        ident, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_TRIGGER, 0, str(ident).encode()
    )


class Consumer:
    """Reads ``kq.stream()`` in a thread, checking continuity as each event is yielded."""

    def __init__(self, kq: kqclient.RemoteKqueue) -> None:
        self.kq = kq
        self.received: list[int] = []
        self.problems: list[str] = []
        self.changed = threading.Condition()
        self.finished = False
        self.stopping = False  # set before the test closes the channel under the stream
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            previous = self.kq.last_sequence
            for ev in self.kq.stream(max_batch=4):
                if self.kq.last_sequence != previous + 1:
                    self.problems.append(
                        f"event {ev.udata!r} has sequence {self.kq.last_sequence}, after "
                        f"{previous}"
                    )
                previous = self.kq.last_sequence
                with self.changed:
                    self.received.append(int(ev.udata))
                    self.changed.notify_all()
        except Exception as exc:  # reported by the test, with what arrived before
            if not self.stopping:
                self.problems.append(f"stream() raised {type(exc).__name__}: {exc}")
        finally:
            with self.changed:
                self.finished = True
                self.changed.notify_all()

    def wait_for(self, count: int, deadline: float) -> None:
        """Return once *count* events arrived; fail with what arrived by *deadline*."""
        with self.changed:
            while len(self.received) < count and not self.finished:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            if len(self.received) < count:
                pytest.fail(
                    f"{len(self.received)} of {count} events arrived in time; problems: "
                    f"{self.problems}; last received: {self.received[-5:]}"
                )


def test_stream_through_cut_connections_delivers_each_event_once(
    logged_daemon: LoggedDaemon,
) -> None:
    """A producer triggers USER events (distinct idents, udata = the number) on a direct
    connection, running a little ahead of the consumer; the consumer's ``kq.stream()`` goes
    through a proxy that cuts each of its first CUTS connections at a random byte. Every event
    arrives exactly once, and ``last_sequence`` grows by one with each event."""
    proxy = CuttingProxy(logged_daemon.tcp_port, CUTS, SEED)
    rng = random.Random(SEED)
    deadline = time.monotonic() + STREAM_BOUND
    with (
        # Both over TCP: the queue belongs to the principal that made it (tcp:anonymous here),
        # and to a Unix-socket caller (uid:N) it would not exist.
        kqclient.connect(f"127.0.0.1:{logged_daemon.tcp_port}") as direct,
        kqclient.connect(f"127.0.0.1:{proxy.port}") as cut,
    ):
        producer_kq = direct.kqueue()
        consumer = Consumer(cut.kqueue(producer_kq.queue_id))
        produced = 0
        try:
            while proxy.cuts_done < CUTS:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"only {proxy.cuts_done} of {CUTS} cuts in {STREAM_BOUND}s "
                        f"({proxy.connections} connections, {produced} events)"
                    )
                batch = rng.randint(1, 8)
                producer_kq.control([user_event(produced + i + 1) for i in range(batch)], 0)
                produced += batch
                # Run ahead of the consumer by at most a few batches: events are triggered
                # both while its stream is up and while it is reconnecting.
                consumer.wait_for(produced - 16, deadline)
            consumer.wait_for(produced, deadline)
        finally:
            consumer.stopping = True
            proxy.close()
            cut.close()
        consumer.thread.join(WAIT_BOUND)
    assert not consumer.problems, consumer.problems
    assert sorted(consumer.received) == list(range(1, produced + 1)), (
        f"lost: {sorted(set(range(1, produced + 1)) - set(consumer.received))[:20]}, "
        f"repeated: {sorted({n for n in consumer.received if consumer.received.count(n) > 1})}"
    )
    assert consumer.kq.last_sequence == produced
    assert proxy.cuts_done >= CUTS
    logged_daemon.stop_and_check_log()


def read_until(stream: Iterator[kqd_pb2.WaitResponse], last: int) -> list[tuple[int, int]]:
    """(sequence, udata as a number) of every event of a raw Wait *stream* up to sequence
    *last*; the stream's deadline bounds the wait, failing with what arrived."""
    got: list[tuple[int, int]] = []
    try:
        for response in stream:
            got += [(item.sequence, int(item.event.udata)) for item in response.events]
            if got and got[-1][0] >= last:
                return got
    except grpc.RpcError as error:
        pytest.fail(f"the stream ended with {error} before sequence {last}; got {got[-5:]}")
    pytest.fail(f"the stream ended before sequence {last}; got {got[-5:]}")


def test_overlapping_wait_streams_each_get_every_event(logged_daemon: LoggedDaemon) -> None:
    """Two raw Wait streams after 0 on one queue, 100 triggers, the first cancelled, one more
    trigger: the second stream receives 1..101, each once (it used to get only 101: events
    the first stream took from the queue never reached it)."""
    with (
        kqclient.connect(logged_daemon.target) as client,
        grpc.insecure_channel(logged_daemon.target) as channel,
    ):
        kq = client.kqueue()
        stub = kqd_pb2_grpc.KQueueServiceStub(channel)
        request = kqd_pb2.WaitRequest(queue_id=kq.queue_id, after_sequence=0)
        first = stub.Wait(request, timeout=WAIT_BOUND)
        second = stub.Wait(request, timeout=WAIT_BOUND)
        # Both streams are established (each sends a progress message at once).
        assert next(first).last_sequence == 0 and next(second).last_sequence == 0
        for ident in range(1, 101):
            kq.control([user_event(ident)], 0)
        assert read_until(first, 100) == [(n, n) for n in range(1, 101)]
        first.cancel()
        kq.control([user_event(101)], 0)
        assert read_until(second, 101) == [(n, n) for n in range(1, 102)]
        second.cancel()
    logged_daemon.stop_and_check_log()


class Watchdog:
    """Closes *client* (so that a blocked stream raises) once *bound* seconds pass; ``fired``
    tells the test why its stream ended."""

    def __init__(self, client: kqclient.Client, bound: float) -> None:
        self.fired = False
        self._client = client
        self._timer = threading.Timer(bound, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._client.close()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def test_resume_from_last_sequence_after_every_event(logged_daemon: LoggedDaemon) -> None:
    """A consumer handles one event of a message, drops the stream and resumes from
    ``last_sequence``: with ``kq.stream()`` again on the same handle, then with a new handle
    ``client.kqueue(queue_id).stream(after=saved)``. Nothing is lost or repeated, and the
    daemon logs no error for all those dropped streams."""
    total = 60
    with kqclient.connect(logged_daemon.target) as client:
        kq = client.kqueue()
        kq.control([user_event(ident) for ident in range(1, total + 1)], 0)  # one message
        got: list[int] = []
        with Watchdog(client, STREAM_BOUND) as watchdog:
            try:
                while len(got) < total // 2:  # the same handle resumes by itself
                    stream = kq.stream()
                    ev = next(stream)
                    stream.close()  # the rest of the message is dropped with the stream
                    got.append(int(ev.udata))
                    assert kq.last_sequence == len(got), "last_sequence is the event's"
                saved = kq.last_sequence
                while len(got) < total:  # a new handle each time, as a new process would
                    handle = client.kqueue(kq.queue_id)
                    stream = handle.stream(after=saved)
                    ev = next(stream)
                    stream.close()
                    got.append(int(ev.udata))
                    assert handle.last_sequence == saved + 1, "one event, the next one"
                    saved = handle.last_sequence
            except Exception as exc:
                if watchdog.fired:
                    pytest.fail(f"no event within {STREAM_BOUND}s after {got[-5:]} ({exc})")
                raise
    assert sorted(got) == list(range(1, total + 1)), f"lost or repeated: {got}"
    logged_daemon.stop_and_check_log()
