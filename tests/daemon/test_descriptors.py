"""A queue's descriptor table: Open, OpenPeerFd, OpenConnection, CloseDescriptor."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import kqclient
import pytest
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_DELETE,
    KQ_EV_EOF,
    KQ_EV_ONESHOT,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_WRITE,
    kevent,
)

from tests.conftest import WAIT_BOUND, wait_events


@pytest.fixture
def kq(daemon_target: str) -> Iterator[kqclient.RemoteKqueue]:
    with kqclient.connect(daemon_target) as client, client.kqueue() as queue:
        yield queue


def connect_result(kq, address: str) -> kevent:
    fd = kq.open_connection(address)
    return kq.control([kevent(fd, KQ_FILTER_WRITE, KQ_EV_ADD | KQ_EV_ONESHOT)], 1, WAIT_BOUND)[0]


def test_connection_to_a_listener_is_writable(kq) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        ev = connect_result(kq, f"127.0.0.1:{server.getsockname()[1]}")
    assert not ev.flags & KQ_EV_EOF and ev.data > 0


def test_refused_connection_is_eof_with_econnrefused(kq) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        ev = connect_result(kq, f"127.0.0.1:{probe.getsockname()[1]}")
    assert ev.flags & KQ_EV_EOF and ev.fflags == errno.ECONNREFUSED


def test_unix_socket_connection(kq, tmp_path) -> None:
    path = str(tmp_path / "app.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        ev = connect_result(kq, f"unix:{path}")
    assert not ev.flags & KQ_EV_EOF


def test_peer_descriptor_is_released_when_its_owner_closes_it(kq) -> None:
    a, b = socket.socketpair()
    kq.open_peer_fd(os.getpid(), a.fileno())  # the daemon now holds a duplicate of a
    b.settimeout(WAIT_BOUND)
    a.close()  # the owner closes: the daemon must let go, or b would never see EOF
    assert b.recv(1) == b"", "the peer never saw EOF: the daemon kept its duplicate"
    b.close()


def test_peer_fd_of_a_missing_process(kq) -> None:
    with pytest.raises(OSError) as info:
        kq.open_peer_fd(2**22 + 12345, 0)
    assert info.value.errno == errno.ESRCH


def test_close_descriptor_drops_its_knotes(kq, tmp_path) -> None:
    fd = kq.open(str(tmp_path))
    kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD, KQ_NOTE_WRITE)], 0)
    kq.close_fd(fd)
    err = kq.control([kevent(fd, KQ_FILTER_VNODE, KQ_EV_DELETE)], 1, 0)[0]
    assert err.data == errno.EBADF


def test_a_connection_retried_by_the_daemon_waits_for_a_listener(kq) -> None:
    """wait-for-it in one call: the daemon tries again while refused, answering once the port
    accepts; with nothing listening, it answers when the time is up, and WRITE reports the
    refusal."""
    import threading

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))  # bound, not listening yet: refused
        address = f"127.0.0.1:{server.getsockname()[1]}"
        got: list[int] = []
        call = threading.Thread(
            target=lambda: got.append(kq.open_connection(address, retry_for=WAIT_BOUND))
        )
        call.start()
        call.join(0.05)  # the call is under way (or already done: then it found no listener)
        server.listen()
        call.join(WAIT_BOUND)
        assert got, "the call never answered"
        kq.control([kevent(got[0], KQ_FILTER_WRITE, KQ_EV_ADD)], 0)
        ev = wait_events(kq)[0]
        assert not ev.flags & KQ_EV_EOF, f"connected, not refused: {ev}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # never listening
        fd = kq.open_connection(f"127.0.0.1:{probe.getsockname()[1]}", retry_for=0.05)
        kq.control([kevent(fd, KQ_FILTER_WRITE, KQ_EV_ADD)], 0)
        assert wait_events(kq)[0].flags & KQ_EV_EOF
