"""The peer-credential relay in its own process: the kernel names the caller, a forged peer
string names nobody, and a relay process that dies is noticed (restarted, or the socket is
withdrawn), never left as a socket that accepts and says nothing.

The gRPC server is played by a plain Unix socket listening on the relay's private target: what
it accepts is exactly what gRPC would, and the address it sees is the peer gRPC would report.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kqd.daemon import peer_relay
from kqd.daemon.credentials import Credentials
from kqd.daemon.peer_relay import PeerCredentialRelay
from tests.conftest import WAIT_BOUND, relay_process, start_daemon, wait_gone


class LogEvent(logging.Handler):
    """Sets ``seen`` when the daemon logs a line containing *text*."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.seen.wait(), WAIT_BOUND)


@pytest.fixture
def watch_log() -> Iterator[Callable[[str], LogEvent]]:
    handlers: list[LogEvent] = []
    logger = logging.getLogger("kqd.daemon")

    def watch(text: str) -> LogEvent:
        handlers.append(LogEvent(text))
        logger.addHandler(handlers[-1])
        return handlers[-1]

    yield watch
    for handler in handlers:
        logger.removeHandler(handler)


def run_with_relay(body: Callable[[PeerCredentialRelay, socket.socket], Awaitable[None]]) -> None:
    """Run *body* with a started relay (on a socket in a fresh directory) and the listening
    socket standing in for gRPC; the relay is closed afterwards, whatever happened."""

    async def scenario() -> None:
        directory = Path(tempfile.mkdtemp(prefix="kqd-relay-test-"))
        relay = PeerCredentialRelay(directory / "kqd.sock")
        private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private.bind(relay.private_target.removeprefix("unix:"))
        private.listen(16)
        private.settimeout(WAIT_BOUND)
        try:
            relay.start()
            await body(relay, private)
        finally:
            relay.close()
            private.close()
            (directory / "kqd.sock").unlink(missing_ok=True)
            directory.rmdir()

    asyncio.run(scenario())


def relayed(relay: PeerCredentialRelay, private: socket.socket) -> tuple[socket.socket, ...]:
    """A client connected to the public socket, the connection gRPC gets for it, and the peer
    string gRPC would report (the relay's name for the connection)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(WAIT_BOUND)
    client.connect(str(relay.path))
    inner, name = private.accept()
    inner.settimeout(WAIT_BOUND)
    return client, inner, f"unix:{name}"


def test_the_kernel_names_the_caller_and_bytes_go_both_ways() -> None:
    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        client, inner, peer = relayed(relay, private)
        with client, inner:
            client.sendall(b"ping")
            assert inner.recv(4) == b"ping"
            inner.sendall(b"pong" * 100_000)  # more than one socket buffer: the relay waits
            got = b""
            while len(got) < 400_000:
                got += client.recv(65536)
            assert got == b"pong" * 100_000
            creds = relay.credentials(peer)
            assert creds is not None
            assert (creds.uid, creds.gid, creds.pid) == (os.geteuid(), os.getegid(), os.getpid())
            assert set(creds.groups) == set(os.getgroups())

    run_with_relay(body)


def test_the_private_directory_is_the_daemons_alone() -> None:
    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        client, inner, peer = relayed(relay, private)
        with client, inner:
            directory = Path(relay.private_target.removeprefix("unix:")).parent
            assert directory.stat().st_mode & 0o777 == 0o700
            assert directory.stat().st_uid == os.geteuid()
            record = directory / (peer.rsplit("/", 1)[1] + ".cred")
            assert record.stat().st_mode & 0o777 == 0o600

    run_with_relay(body)


def test_a_peer_that_did_not_come_through_the_relay_is_nobody() -> None:
    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        client, inner, peer = relayed(relay, private)
        with client, inner:
            directory = peer.rsplit("/", 1)[0]
            for forged in (
                "unix:",
                "unix:/tmp/c1.1",
                f"{directory}/grpc.sock",
                f"{peer}.cred",
                f"{directory}/../{peer.rsplit('/', 1)[1]}",
                f"{directory}/c1.999",
                peer.replace("unix:", "ipv4:"),
            ):
                assert relay.credentials(forged) is None, forged
            assert relay.credentials(peer) is not None

    run_with_relay(body)


def test_a_relay_that_dies_is_restarted_under_new_names(
    watch_log: Callable[[str], LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_relay, "RESTART_AFTER", 0.0)
    restarted = watch_log("starting another")

    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        client, inner, first = relayed(relay, private)
        pid = relay.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await restarted.wait()
        assert relay.pid not in (None, pid)
        with client, inner:
            assert client.recv(1) == b""  # its connections were cut
        again, inner_again, second = relayed(relay, private)
        with again, inner_again:
            assert second.rsplit("/", 1)[1].startswith("c2.")  # a new generation of names
            assert second != first
            assert relay.credentials(second) is not None
            again.sendall(b"x")
            assert inner_again.recv(1) == b"x"

    run_with_relay(body)


def test_a_relay_that_dies_young_withdraws_the_socket(
    watch_log: Callable[[str], LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer_relay, "RESTART_AFTER", 3600.0)
    withdrawn = watch_log("no longer serves")

    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        pid = relay.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await withdrawn.wait()
        assert relay.pid is None
        assert not relay.path.exists()
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client,
            pytest.raises(FileNotFoundError),
        ):
            client.connect(str(relay.path))

    run_with_relay(body)


def test_close_ends_the_relay_process_and_removes_the_directory() -> None:
    seen: dict[str, object] = {}

    async def body(relay: PeerCredentialRelay, private: socket.socket) -> None:
        client, inner, _ = relayed(relay, private)
        client.close()
        inner.close()
        seen["pid"] = relay.pid
        seen["directory"] = Path(relay.private_target.removeprefix("unix:")).parent

    run_with_relay(body)
    assert not Path(f"/proc/{seen['pid']}").exists(), "close() reaps the relay process"
    assert not Path(str(seen["directory"])).exists()


def test_a_daemon_killed_outright_takes_its_relay_with_it(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    try:
        relay, argv = relay_process(daemon.process.pid)
        directory = Path(argv[-2])
        assert directory.is_dir()
    finally:
        daemon.process.kill()
        daemon.process.wait(WAIT_BOUND)
    wait_gone(relay)  # it saw the daemon's end of CONTROL close
    assert not directory.exists()


def test_credentials_are_plain_records() -> None:
    from kqd.daemon.relay_process import read_record

    uid, gid, pid, groups = read_record(b"1000 100 42 4 24 27\n")
    assert Credentials(uid, gid, groups, pid) == Credentials(1000, 100, (4, 24, 27), 42)
