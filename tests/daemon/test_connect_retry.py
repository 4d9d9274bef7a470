"""connect_when_listening (OpenConnection's retry_for): one socket for the whole wait, tried
again while refused, connected once a listener appears, nothing left open when cancelled."""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from kqd.daemon import connections
from kqd.daemon.connections import connect_when_listening
from tests.conftest import WAIT_BOUND


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _refusing() -> socket.socket:
    """A bound port nobody listens on yet: connecting to it is refused."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    return server


class Counted(socket.socket):
    """A socket that counts its kind and its connect tries."""

    made = 0
    tries = 0
    refused = asyncio.Event()

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if self.family == socket.AF_INET:
            Counted.made += 1

    def connect_ex(self, address: object) -> int:  # type: ignore[override]
        Counted.tries += 1
        if Counted.tries >= 6:
            Counted.refused.set()  # refused a few times over
        return super().connect_ex(address)  # type: ignore[arg-type]


def test_connected_once_a_listener_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _refusing()

    async def scenario() -> int:
        Counted.refused = asyncio.Event()
        connecting = asyncio.ensure_future(
            connect_when_listening(socket.AF_INET, server.getsockname(), WAIT_BOUND)
        )
        await asyncio.wait_for(Counted.refused.wait(), WAIT_BOUND)
        server.listen()
        return await asyncio.wait_for(connecting, WAIT_BOUND)

    monkeypatch.setattr(connections.socket, "socket", Counted)
    try:
        fd = asyncio.run(scenario())
        assert Counted.made == 1, "one socket serves every try"
        assert Counted.tries > 6
        monkeypatch.undo()
        with socket.socket(fileno=fd) as connected:
            assert connected.getpeername() == server.getsockname()
    finally:
        server.close()


def test_other_failures_end_the_wait() -> None:
    async def scenario() -> None:
        # Broadcast: refused by the network stack itself (ENETUNREACH), not by a peer.
        await connect_when_listening(socket.AF_INET, ("255.255.255.255", 9), WAIT_BOUND)

    with pytest.raises(OSError) as failure:
        asyncio.run(asyncio.wait_for(scenario(), WAIT_BOUND))
    assert failure.value.errno == errno.ENETUNREACH


def test_cancelled_wait_leaves_nothing_open() -> None:
    server = _refusing()
    before = _open_descriptors()

    async def scenario() -> None:
        connecting = asyncio.ensure_future(
            connect_when_listening(socket.AF_INET, server.getsockname(), WAIT_BOUND)
        )
        for _ in range(10):  # a few tries
            await asyncio.sleep(connections.RETRY_SECONDS)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting

    try:
        asyncio.run(scenario())
        assert _open_descriptors() == before, "the socket of the cancelled wait was left open"
    finally:
        server.close()
