"""A restart is a pause, not a loss: queues, knotes and the delivery log survive ``kqd serve``
going away (SIGTERM or ``kill -9``), and come back re-armed only on the same objects."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import kqclient
import pytest
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_FILTER_READ,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_NOTE_EXIT,
    KQ_NOTE_EXTEND,
    KQ_NOTE_REVOKE,
    KQ_NOTE_TRIGGER,
    KQ_NOTE_WRITE,
    kevent,
)

import kqd.core.linux.proc
from kqd.daemon.server import serve_command
from tests.conftest import WAIT_BOUND, sleeper


class Restartable:
    """``kqd serve`` on one socket and one state directory, stopped and started again."""

    def __init__(self, directory: Path) -> None:
        self.socket = directory / "kqd.sock"
        self.state = directory / "state"
        self.target = f"unix://{self.socket}"
        self.process: subprocess.Popen[str] | None = None
        self.start()

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            serve_command(self.target, *extra, state=self.state),
            stderr=subprocess.PIPE,
            text=True,
        )
        kqclient.wait_for_daemon(self.target, timeout=WAIT_BOUND)

    def kill(self) -> None:
        """kill -9: no chance to write anything down on the way out."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(WAIT_BOUND)
        self._check_log(allow_missing_exit=True)

    def stop(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(WAIT_BOUND) == 0
        self._check_log()

    def _check_log(self, allow_missing_exit: bool = False) -> None:
        assert self.process is not None and self.process.stderr is not None
        log = self.process.stderr.read()
        assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Restartable]:
    daemon = Restartable(tmp_path)
    yield daemon
    if daemon.process is not None and daemon.process.poll() is None:
        daemon.stop()


class Consumer:
    """A client that streams a queue in a thread of its own, across restarts."""

    def __init__(self, target: str, queue_id: str) -> None:
        self.client = kqclient.connect(target)
        self.kq = self.client.kqueue(queue_id)
        self.received: list[tuple[int, kevent]] = []
        self.error: BaseException | None = None
        self._arrived = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for ev in self.kq.stream():
                with self._arrived:
                    self.received.append((self.kq.last_sequence, ev))
                    self._arrived.notify_all()
        except BaseException as exc:  # reported by wait_for
            self.error = exc
            with self._arrived:
                self._arrived.notify_all()

    def wait_for(self, count: int, bound: float = WAIT_BOUND * 3) -> list[kevent]:
        deadline = time.monotonic() + bound
        with self._arrived:
            while len(self.received) < count and self.error is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.wait(remaining)
        assert self.error is None, f"the stream failed: {self.error!r}"
        assert len(self.received) >= count, (
            f"{len(self.received)} of {count} events in {bound}s: {self.received[-5:]}"
        )
        sequences = [seq for seq, _ in self.received]
        assert sequences == list(range(1, len(sequences) + 1)), "sequence numbers follow on"
        return [ev for _, ev in self.received]


def user(ident: int, flags: int = KQ_EV_ADD | KQ_EV_ONESHOT, fflags: int = 0) -> kevent:
    return kevent(ident, KQ_FILTER_USER, flags, fflags, 0, f"u{ident}".encode())


def test_sigterm_restart_mid_stream_loses_and_repeats_nothing(daemon: Restartable) -> None:
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        kq.control([user(i) for i in range(20)], 0)
        consumer = Consumer(daemon.target, kq.queue_id)
        kq.control([user(i, 0, KQ_NOTE_TRIGGER) for i in range(10)], 0)
        consumer.wait_for(10)
        daemon.stop()
        daemon.start()
        with kqclient.connect(daemon.target) as again:
            same = again.kqueue(kq.queue_id)  # the same id, after the restart
            same.control([user(i, 0, KQ_NOTE_TRIGGER) for i in range(10, 20)], 0)
        got = consumer.wait_for(20)
    assert sorted(ev.udata for ev in got) == sorted(f"u{i}".encode() for i in range(20))


def retried(call, ok_errnos: tuple[int, ...] = ()) -> None:
    """Make *call* until the daemon answers it (it may be down, or killed under the call).
    A retried change must be harmless: *ok_errnos* are the answers that mean "done already"."""
    deadline = time.monotonic() + WAIT_BOUND * 3
    while True:
        try:
            call()
            return
        except kqclient.DaemonUnavailable:
            assert time.monotonic() < deadline, "the daemon did not come back"
            time.sleep(0.02)  # a reconnect pace, not a wait for an outcome
        except OSError as exc:
            if exc.errno in ok_errnos:
                return
            raise


def test_kill9_at_random_points_loses_and_repeats_nothing(daemon: Restartable) -> None:
    """A producer registers, triggers and makes processes exit while a consumer streams; the
    daemon is killed with SIGKILL at 20 random moments and started again on the same state.
    Every trigger and every exit is delivered exactly once, in unbroken sequence."""
    rng = random.Random(20261129)
    total = 120
    with kqclient.connect(daemon.target) as client:
        queue_id = client.kqueue().queue_id
    consumer = Consumer(daemon.target, queue_id)
    expected: set[bytes] = set()
    done = threading.Event()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with kqclient.connect(daemon.target) as c:
                kq = c.kqueue(queue_id)
                for ident in range(total):
                    child = sleeper()
                    tag = f"p{child.pid}".encode()
                    expected.update((f"u{ident}".encode(), tag))
                    proc = kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, tag)
                    retried(lambda: kq.control([user(ident), proc], 0))  # noqa: B023
                    trigger = user(ident, 0, KQ_NOTE_TRIGGER)
                    retried(lambda: kq.control([trigger], 0), (errno.ENOENT,))  # noqa: B023
                    child.kill()  # exits while the daemon is up or down: reported either way
                    child.wait(WAIT_BOUND)
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=produce, daemon=True).start()
    for _ in range(20):
        if done.wait(rng.uniform(0.05, 0.4)):  # a random moment of the workload
            break
        daemon.kill()
        daemon.start()
    assert done.wait(60), "the producer did not finish"
    assert not failure, failure
    got = consumer.wait_for(len(expected), bound=60)
    udata = [ev.udata for ev in got]
    assert len(udata) == len(set(udata)), "nothing delivered twice"
    assert set(udata) == expected, f"missing: {sorted(expected - set(udata))[:10]}"
    for ev in got:
        if ev.filter == KQ_FILTER_PROC:
            assert ev.data in (signal.SIGKILL, -1), ev  # its status, or unknown (gone meanwhile)


def test_a_timer_counts_what_it_missed_while_down(daemon: Restartable) -> None:
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        kq.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD, 0, 100, b"t")], 0)  # every 100 ms
        first = kq.control(None, 1, WAIT_BOUND)[0]
        daemon.kill()
        with kqd.core.kqueue() as clock:  # 600 ms of downtime, on a timer of our own
            clock.control([kevent(1, KQ_FILTER_TIMER, KQ_EV_ADD | KQ_EV_ONESHOT, 0, 600)], 0)
            assert clock.control(None, 1, WAIT_BOUND), "the local timer never fired"
        daemon.start()
        again = client.kqueue(kq.queue_id).control(None, 1, WAIT_BOUND)[0]
    assert first.udata == again.udata == b"t"
    assert again.data >= 5, f"expirations while down counted: {again.data}"


def test_objects_that_changed_while_down(daemon: Restartable, tmp_path: Path) -> None:
    """A file appended to while kqd is down reports the write; a file replaced by another at
    the same path reports NOTE_REVOKE with EV_EOF; a connection kqd made is lost (EV_EOF,
    ECONNABORTED); a process that exited while down reports its exit."""
    kept, replaced = tmp_path / "kept.log", tmp_path / "replaced.log"
    kept.write_text("a")
    replaced.write_text("b")
    child = sleeper()
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        kqclient.connect(daemon.target) as client,
    ):
        kq = client.kqueue()
        notes = KQ_NOTE_WRITE | KQ_NOTE_EXTEND
        kept_fd, replaced_fd = kq.open(str(kept)), kq.open(str(replaced))
        conn_fd = kq.open_connection(f"127.0.0.1:{server.getsockname()[1]}")
        kq.control(
            [
                kevent(kept_fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, notes, 0, b"kept"),
                kevent(replaced_fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, notes, 0, b"repl"),
                kevent(conn_fd, KQ_FILTER_READ, KQ_EV_ADD | KQ_EV_CLEAR, 0, 0, b"conn"),
                kevent(child.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"child"),
            ],
            0,
        )
        daemon.kill()
        with kept.open("a") as f:
            f.write("more")
        replaced.unlink()
        replaced.write_text("another file at the same path")
        child.kill()
        child.wait(WAIT_BOUND)
        daemon.start()
        events = {}
        queue = client.kqueue(kq.queue_id)
        deadline = time.monotonic() + WAIT_BOUND
        while len(events) < 4 and time.monotonic() < deadline:
            for ev in queue.control(None, 8, 1):
                events[ev.udata] = ev
    assert events[b"kept"].fflags == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
    assert events[b"repl"].fflags == KQ_NOTE_REVOKE and events[b"repl"].flags & KQ_EV_EOF
    assert events[b"conn"].flags & KQ_EV_EOF and events[b"conn"].fflags == 103  # ECONNABORTED
    assert events[b"child"].fflags == KQ_NOTE_EXIT and events[b"child"].data == -1


PID_REUSE = r"""
import json, os, signal, subprocess, sys, time
sys.path[:0] = {paths!r}
import kqclient
from kqclient import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent
import kqd.core.linux.proc
from kqd.daemon.server import serve_command

target, state = "unix://{directory}/ns.sock", {state!r}
def start():
    daemon = subprocess.Popen(serve_command(target, state=state))
    kqclient.wait_for_daemon(target, timeout=10)
    return daemon

daemon = start()
old = subprocess.Popen(["sleep", "60"])
old_start = kqd.core.linux.proc.process_start_time(old.pid)
client = kqclient.connect(target)
kq = client.kqueue()
kq.control([kevent(old.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"old")], 0)
daemon.kill(); daemon.wait()
old.kill(); old.wait()
# kqd tells processes apart by pid and start time, which counts clock ticks (10 ms): a newcomer
# on the same pid within the old one's tick would be the same process to it. A real pid reuse
# comes only once the pid space has cycled, far later; here it is forced, so wait (bounded by
# one tick) until the tick has moved on.
ticks = os.sysconf("SC_CLK_TCK")
while time.clock_gettime(time.CLOCK_BOOTTIME) * ticks < old_start + 2:
    time.sleep(0.001)
with open("/proc/sys/kernel/ns_last_pid", "w") as f:
    f.write(str(old.pid - 1))
newcomer = subprocess.Popen(["sleep", "60"])
daemon = start()
events = client.kqueue(kq.queue_id).control(None, 4, 10)
newcomer.kill(); newcomer.wait()
later = client.kqueue(kq.queue_id).control(None, 4, 1)
print(json.dumps({{"reused": newcomer.pid == old.pid,
                  "events": [[e.ident, e.data, e.udata.decode()] for e in events],
                  "later": len(later), "pid": old.pid}}))
daemon.terminate(); daemon.wait()
"""


def test_a_recycled_pid_is_never_watched(tmp_path: Path) -> None:
    """In a private pid namespace, the watched process's pid goes to a newcomer while kqd is
    down: after the restart the old knote reports the old process's exit (status unknown) and
    the newcomer's exit is never reported."""
    import json

    if os.geteuid() != 0:
        pytest.skip("a private pid namespace needs root")
    program = PID_REUSE.format(
        paths=[p for p in sys.path if p], directory=tmp_path, state=str(tmp_path / "state")
    )
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.skip(f"no private pid namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["reused"], "the newcomer got the old pid (the test's premise)"
    assert outcome["events"] == [[outcome["pid"], -1, "old"]]
    assert outcome["later"] == 0, "the newcomer's exit was reported: it was watched"


def test_a_corrupt_or_newer_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    database = state / "kqd.sqlite3"

    def serve(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            serve_command(f"unix://{tmp_path}/kqd.sock", *extra, state=state),
            capture_output=True, text=True, timeout=WAIT_BOUND,
        )  # fmt: skip

    database.write_bytes(b"this is not a database" * 100)
    refused = serve()
    assert refused.returncode == 2 and "--reset-state" in refused.stderr, refused.stderr
    assert database.read_bytes().startswith(b"this is not"), "nothing discarded silently"
    database.unlink()
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA user_version = 99")
    newer = serve()
    assert newer.returncode == 2 and "newer kqd" in newer.stderr, newer.stderr
    process = subprocess.Popen(
        serve_command(f"unix://{tmp_path}/kqd.sock", "--reset-state", state=state)
    )
    try:
        kqclient.wait_for_daemon(f"unix://{tmp_path}/kqd.sock", timeout=WAIT_BOUND)
    finally:
        process.terminate()
        assert process.wait(WAIT_BOUND) == 0


def test_a_consumed_trigger_is_not_delivered_again_after_a_crash(daemon: Restartable) -> None:
    """An EV_CLEAR USER knote triggered and delivered just before kill -9 (before the daemon's
    next refresh wrote the knote down again): the log tells the restarted daemon the trigger
    was consumed, so it is not delivered twice."""
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        clear = KQ_EV_ADD | KQ_EV_CLEAR
        kq.control([user(1, clear), user(2, clear)], 0)
        consumer = Consumer(daemon.target, kq.queue_id)
        kq.control([user(1, 0, KQ_NOTE_TRIGGER)], 0)
        consumer.wait_for(1)
        daemon.kill()
        daemon.start()
        with kqclient.connect(daemon.target) as again:  # the positive control: knote 2
            again.kqueue(kq.queue_id).control([user(2, 0, KQ_NOTE_TRIGGER)], 0)
        got = consumer.wait_for(2)
    assert [ev.ident for ev in got] == [1, 2], "knote 1's consumed trigger came back"


def test_a_version_1_state_is_migrated(tmp_path: Path) -> None:
    """A state file of the first schema (a row per logged event, knotes without a log
    position) is migrated on open: its queue, knote and events come back."""
    from kqd.daemon.store import StateStore

    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "kqd.sqlite3") as db:
        db.executescript(
            """
            CREATE TABLE queues (key TEXT PRIMARY KEY, owner TEXT NOT NULL, owner_peer TEXT,
                lease REAL NOT NULL, last_sequence INTEGER NOT NULL);
            CREATE TABLE descriptors (key TEXT NOT NULL, fd INTEGER NOT NULL, kind TEXT NOT NULL,
                spec TEXT NOT NULL, PRIMARY KEY (key, fd));
            CREATE TABLE knotes (key TEXT NOT NULL, ident INTEGER NOT NULL, filter INTEGER NOT NULL,
                flags INTEGER NOT NULL, fflags INTEGER NOT NULL, data INTEGER NOT NULL,
                udata BLOB NOT NULL, disabled INTEGER NOT NULL, state TEXT NOT NULL,
                PRIMARY KEY (key, ident, filter));
            CREATE TABLE events (key TEXT NOT NULL, sequence INTEGER NOT NULL,
                ident INTEGER NOT NULL, filter INTEGER NOT NULL, flags INTEGER NOT NULL,
                fflags INTEGER NOT NULL, data INTEGER NOT NULL, udata BLOB NOT NULL,
                PRIMARY KEY (key, sequence));
            INSERT INTO queues VALUES ('k', 'uid:0', NULL, 60.0, 2);
            INSERT INTO knotes VALUES ('k', 7, -11, 33, 0, 0, x'6a6f62', 0, '{}');
            INSERT INTO events VALUES ('k', 1, 7, -11, 32, 0, 0, x'6a6f62');
            INSERT INTO events VALUES ('k', 2, 7, -11, 32, 0, 0, x'6a6f62');
            PRAGMA user_version = 1;
            """
        )
    store = StateStore(state)
    (record,) = store.load()
    store.close()
    assert (record.key, record.last_sequence) == ("k", 2)
    ((snapshot, seq),) = record.knotes
    assert (snapshot.change.ident, snapshot.change.udata, seq) == (7, b"job", 2)
    assert [(n, ev.ident, ev.udata) for n, ev in record.events] == [(1, 7, b"job"), (2, 7, b"job")]
