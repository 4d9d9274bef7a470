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
from kqd.core import kqueue
from kqd.v1 import kqd_pb2


class RemoteStream:
    """A remote queue and an open Wait stream on it, read event by event."""

    def __init__(self, client: kqclient.Client) -> None:
        self.kq = client.kqueue()
        self._responses = client.stub.Wait(kqd_pb2.WaitRequest(queue_id=self.kq.queue_id))
        next(self._responses)  # the stream is established
        self._events: Iterator[kqd_pb2.SequencedKevent] = iter(())

    def next_event(self) -> kqd_pb2.SequencedKevent:
        for item in self._events:
            return item
        while True:
            response = next(self._responses)
            if response.events:
                self._events = iter(response.events[1:])
                return response.events[0]


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
