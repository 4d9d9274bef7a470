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

from tests.conftest import WAIT_BOUND


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
