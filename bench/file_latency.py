"""File change -> notified: kqd (core, remote stream) next to Watchman, watchdog, inotifywait."""

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
from bench.session import Session
from bench.waiting import BOUND, Peer, timed
from kqd.core import KQ_EV_ADD, KQ_EV_CLEAR, KQ_FILTER_VNODE, KQ_NOTE_WRITE, kevent

Trial = Callable[[], int]


class Watched:
    """A file in a directory of its own, and a descriptor that appends to it."""

    def __init__(self, session: Session, name: str) -> None:
        self.directory = session.scratch / name
        self.directory.mkdir()
        self.path = self.directory / "watched.log"
        self.path.write_bytes(b"")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def write(self) -> None:
        os.write(self.fd, b"x\n")


def floor(session: Session) -> Trial:
    target = Watched(session, "floor")
    notify = inotify_simple.INotify()
    notify.add_watch(str(target.path), inotify_simple.flags.MODIFY)
    return lambda: timed(target.write, lambda: notify.read(timeout=int(BOUND * 1000)))


def core(session: Session) -> Trial:
    target = Watched(session, "core")
    fd = os.open(target.path, os.O_RDONLY)
    session.core.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)
    return lambda: timed(target.write, lambda: session.core.control(None, 1, BOUND))


def remote_stream(session: Session) -> Trial:
    target = Watched(session, "stream")
    kq = session.stream.kq
    fd = kq.open(str(target.path))
    kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)
    return lambda: timed(target.write, session.stream.next_event)


def inotifywait(session: Session) -> Trial:
    exe = need_command("inotifywait")
    target = Watched(session, "inotifywait")
    proc = subprocess.Popen(
        [exe, "-m", "-e", "modify", str(target.path)],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        if "Watches established" in line:
            break
    stdout = proc.stdout
    session.cleanups.append(proc.kill)
    return lambda: timed(target.write, stdout.readline)


def watchdog_observer(session: Session) -> Trial:
    need_module("watchdog")
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    target = Watched(session, "watchdog")
    changed = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_modified(self, event) -> None:
            if event.src_path == str(target.path):
                changed.set()

    observer = Observer()
    observer.schedule(Handler(), str(target.directory))
    observer.start()
    session.cleanups.append(observer.stop)

    def trial() -> int:
        changed.clear()
        return timed(target.write, lambda: changed.wait(BOUND))

    return trial


def watchman(session: Session) -> Trial:
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
    client.receive()  # the initial result of the subscription

    def changed() -> None:
        while not client.getSubscription("bench"):
            client.receive()

    return lambda: timed(target.write, changed)


STREAM = "kqd client stream (Unix socket)"
WATCHDOG = "watchdog observer, in process"
WATCHMAN = "Watchman subscription (default settle)"

PEERS = [
    Peer("in-process inotify (floor)", floor),
    Peer("kqd core, in process", core),
    Peer(STREAM, remote_stream),
    Peer("inotifywait -m (command)", inotifywait),
    Peer(WATCHDOG, watchdog_observer),
    Peer(WATCHMAN, watchman),
]
