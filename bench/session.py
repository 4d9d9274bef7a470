"""What every comparison shares in one run: a live daemon, a client, an open stream, a core
kqueue and a scratch directory."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import kqclient

from bench.daemon import running_daemon
from kqd.core import KQ_EV_ADD, KQ_EV_ONESHOT, KQ_FILTER_USER, KQ_NOTE_TRIGGER, kevent, kqueue


class RemoteStream:
    """A remote queue and its ``stream()``, kqclient's own (a Session, packed batches), read
    event by event: the path a user's program takes."""

    def __init__(self, client: kqclient.Client) -> None:
        self.kq = client.kqueue()
        self._events = self.kq.stream()
        # Established before any timing: one event through it.
        self.kq.control([kevent(0, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_ONESHOT, KQ_NOTE_TRIGGER)], 0)
        next(self._events)

    def next_event(self) -> kevent:
        return next(self._events)


@dataclass
class Session:
    target: str
    daemon_pid: int
    client: kqclient.Client
    stream: RemoteStream
    core: kqueue
    scratch: Path
    quick: bool
    cleanups: list[Callable[[], object]] = field(default_factory=list)


@contextlib.contextmanager
def session(quick: bool) -> Iterator[Session]:
    with (
        running_daemon() as daemon,
        kqclient.connect(daemon.target) as client,
        kqueue() as core,
        tempfile.TemporaryDirectory(prefix="kqd-bench-") as scratch,
    ):
        run = Session(
            daemon.target, daemon.pid, client, RemoteStream(client), core, Path(scratch), quick
        )
        try:
            yield run
        finally:
            for cleanup in reversed(run.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
