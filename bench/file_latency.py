"""File change -> notified: kqd (core, remote stream) next to Watchman, watchdog, inotifywait.

Every waiter watches its own file, established once per run; a trial appends a line to it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import inotify_simple

from bench.peers import Skip, need_command, need_module
from bench.rounds import interleaved
from bench.session import Session
from bench.stats import Table
from bench.waiting import BOUND, Arm, Armed, Peer, Waiter, in_thread
from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_VNODE, KQ_NOTE_WRITE, kevent


class Watched:
    """A file in a directory of its own, and a descriptor that appends to it."""

    def __init__(self, session: Session, name: str) -> None:
        self.directory = session.scratch / name
        self.directory.mkdir()
        self.path = self.directory / "watched.log"
        self.path.write_bytes(b"")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        session.cleanups.append(lambda: os.close(self.fd))

    def write(self) -> None:
        os.write(self.fd, b"x\n")


def _written(target: Watched, waiter: Callable[[], Waiter]) -> Arm:
    return lambda: Armed(target.write, waiter())


def floor(session: Session) -> Arm:
    target = Watched(session, "floor")
    notify = inotify_simple.INotify()
    notify.add_watch(str(target.path), inotify_simple.flags.MODIFY)
    return _written(target, lambda: in_thread(lambda: notify.read(timeout=int(BOUND * 1000))))


def core(session: Session) -> Arm:
    target = Watched(session, "core")
    fd = os.open(target.path, os.O_RDONLY)
    session.cleanups.append(lambda: os.close(fd))
    session.core.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)
    return _written(target, lambda: in_thread(lambda: session.core.control(None, 1, BOUND)))


def remote_stream(session: Session) -> Arm:
    target = Watched(session, "stream")
    kq = session.stream.kq
    fd = kq.open(str(target.path))
    kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)
    return _written(target, lambda: in_thread(lambda: session.stream.next_event() is not None))


def inotifywait(session: Session) -> Arm:
    exe = need_command("inotifywait")
    target = Watched(session, "inotifywait")
    proc = subprocess.Popen(
        [exe, "-m", "-e", "modify", str(target.path)],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    session.cleanups.append(proc.kill)
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        if "Watches established" in line:
            break
    stdout = proc.stdout
    return _written(target, lambda: in_thread(stdout.readline))


class Stamp:
    """The moment a callback ran (watchdog calls back from its own thread)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._at = 0

    def set(self) -> None:
        if not self._event.is_set():
            self._at = time.perf_counter_ns()
            self._event.set()

    def clear(self) -> Stamp:
        self._event.clear()
        return self

    def waiting(self) -> bool:
        return not self._event.is_set()

    def at(self) -> int:
        if not self._event.wait(BOUND):
            raise TimeoutError(f"no event within {BOUND}s")
        return self._at


def watchdog_observer(session: Session) -> Arm:
    need_module("watchdog")
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    target = Watched(session, "watchdog")
    changed = Stamp()

    class Handler(FileSystemEventHandler):
        def on_modified(self, event: FileSystemEvent) -> None:
            if event.src_path == str(target.path):
                changed.set()

    observer = Observer()
    observer.schedule(Handler(), str(target.directory))
    observer.start()
    session.cleanups.append(observer.stop)
    target.write()  # the watch is in place once a first change is seen
    changed.at()
    # Its threads wait all along: each trial only clears the stamp its callback sets.
    return _written(target, lambda: Waiter(changed.clear().at, waiting=changed.waiting))


def watchman(session: Session) -> Arm:
    exe = need_command("watchman")
    need_module("pywatchman")
    import pywatchman

    state = Path(tempfile.mkdtemp(prefix="watchman-", dir=session.scratch))
    sock = state / "sock"
    server = subprocess.Popen(
        [
            exe,
            "--foreground",
            f"--sockname={sock}",
            f"--statefile={state / 'state'}",
            f"--logfile={state / 'log'}",
            f"--pidfile={state / 'pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    session.cleanups.append(server.kill)
    deadline = time.monotonic() + BOUND
    while not sock.exists():
        if time.monotonic() > deadline or server.poll() is not None:
            raise Skip("the watchman server did not start")
        time.sleep(0.05)
    target = Watched(session, "watchman")
    client = pywatchman.client(sockpath=str(sock), timeout=BOUND)
    root = client.query("watch-project", str(target.directory))["watch"]
    client.query("subscribe", root, "bench", {"fields": ["name"]})

    def changed() -> bool:
        while not client.getSubscription("bench"):  # takes what arrived
            client.receive()
        return True

    changed()  # the initial result: the subscription is established
    return _written(target, lambda: in_thread(changed))


FLOOR = "in-process inotify (floor)"
CORE = "kqd core, in process"
STREAM = "kqd client stream (Unix socket)"
WATCHDOG = "watchdog observer, in process"
WATCHMAN = "Watchman subscription (default settle)"

PEERS = [
    Peer(FLOOR, floor),
    Peer(CORE, core),
    Peer(STREAM, remote_stream),
    Peer("inotifywait -m (command)", inotifywait),
    Peer(WATCHDOG, watchdog_observer),
    Peer(WATCHMAN, watchman),
]


def measure(session: Session) -> list[Table]:
    # No waiter here polls: every trial gets the same short idle (caches cool, settles end).
    return [interleaved("file", "File change -> notified", PEERS, session, phase=0.0)]
