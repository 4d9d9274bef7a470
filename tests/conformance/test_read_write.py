"""EVFILT_READ and EVFILT_WRITE on sockets, pipes, FIFOs and regular files."""

from __future__ import annotations

import errno
import os
import socket
import tempfile

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_DELETE,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_FILTER_READ,
    KQ_FILTER_WRITE,
    KQ_NOTE_LOWAT,
    kevent,
)
from tests.conftest import wait_events


@pytest.fixture
def ident(kq, backend):
    """ident(fd_or_socket): how the backend names one of our descriptors (remote: a duplicate
    taken with OpenPeerFd)."""
    return lambda obj: backend.adopt(kq, obj if isinstance(obj, int) else obj.fileno())


@pytest.fixture
def local_only(backend) -> None:
    if not backend.local:
        pytest.skip("about this process's own descriptor numbers")


def read(fd, flags: int = KQ_EV_ADD, fflags: int = 0, data: int = 0, udata: bytes = b"") -> kevent:
    return kevent(fd, KQ_FILTER_READ, flags, fflags, data, udata)


def write(fd, flags: int = KQ_EV_ADD, fflags: int = 0, data: int = 0) -> kevent:
    return kevent(fd, KQ_FILTER_WRITE, flags, fflags, data)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_level_triggered_read_repeats_while_data_remains(kq, pair, ident) -> None:
    a, b = pair
    fd = ident(a)
    kq.control([read(fd, udata=b"sock")], 0)
    assert kq.control(None, 4, 0) == []
    b.send(b"hello")
    ev = wait_events(kq)[0]
    assert (ev.ident, ev.data, ev.udata) == (fd, 5, b"sock")
    assert len(kq.control(None, 4, 0)) == 1, "without EV_CLEAR a readable socket is reported again"
    a.recv(5)
    assert kq.control(None, 4, 0) == [], "drained: the level knote leaves the queue"


def test_edge_triggered_read_reports_once_per_arrival(kq, pair, ident) -> None:
    a, b = pair
    kq.control([read(ident(a), KQ_EV_ADD | KQ_EV_CLEAR)], 0)
    b.send(b"x")
    assert wait_events(kq)[0].data == 1
    assert kq.control(None, 4, 0) == [], "EV_CLEAR: the second call returns nothing"
    b.send(b"yz")
    assert wait_events(kq)[0].data == 3


def test_registration_reports_data_already_there(kq, pair, ident) -> None:
    a, b = pair
    b.send(b"early")
    kq.control([read(ident(a))], 0)
    assert wait_events(kq)[0].data == 5


def test_peer_close_is_eof_with_remaining_data(kq, pair, ident) -> None:
    a, b = pair
    kq.control([read(ident(a))], 0)
    b.send(b"last")
    b.close()
    ev = wait_events(kq)[0]
    assert ev.flags & KQ_EV_EOF and ev.data == 4


def test_lowat_waits_for_threshold(kq, pair, ident) -> None:
    a, b = pair
    kq.control([read(ident(a), KQ_EV_ADD, KQ_NOTE_LOWAT, 5)], 0)
    b.send(b"abc")
    assert kq.control(None, 4, 0.05) == []
    b.send(b"de")
    assert wait_events(kq)[0].data == 5


def test_listening_socket_reports_backlog(kq, ident) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        kq.control([read(ident(server))], 0)
        clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
        try:
            ev = wait_events(kq)[0]
            while ev.data < 3:
                ev = wait_events(kq)[0]
            assert ev.data == 3
        finally:
            for c in clients:
                c.close()


def test_pipe_read_data_and_eof_when_writer_leaves(kq, ident) -> None:
    r, w = os.pipe()
    try:
        kq.control([read(ident(r))], 0)
        os.write(w, b"1234")
        assert wait_events(kq)[0].data == 4
        os.close(w)
        ev = wait_events(kq)[0]
        assert ev.flags & KQ_EV_EOF
    finally:
        os.close(r)


def test_fifo(kq, ident) -> None:
    path = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(path, os.O_WRONLY)
    try:
        kq.control([read(ident(r))], 0)
        os.write(w, b"ab")
        assert wait_events(kq)[0].data == 2
    finally:
        os.close(w)
        os.close(r)


def test_regular_file_read_data_is_size_minus_offset(kq, ident) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(b"0123456789")
        f.flush()
        fd = os.open(f.name, os.O_RDONLY)
        try:
            os.lseek(fd, 4, os.SEEK_SET)
            kq.control([read(ident(fd), KQ_EV_ADD | KQ_EV_CLEAR)], 0)
            assert wait_events(kq)[0].data == 6
            f.write(b"ab")
            f.flush()
            assert wait_events(kq)[0].data == 8, "a write to the file re-activates READ"
        finally:
            os.close(fd)


def test_write_reports_free_space(kq, pair, ident) -> None:
    a, _b = pair
    kq.control([write(ident(a))], 0)
    ev = wait_events(kq)[0]
    assert ev.filter == KQ_FILTER_WRITE and ev.data > 0


def test_pipe_write_space_and_eof_when_reader_leaves(kq, ident) -> None:
    r, w = os.pipe()
    try:
        kq.control([write(ident(w))], 0)
        assert wait_events(kq)[0].data == 65536
        os.close(r)
        assert wait_events(kq)[0].flags & KQ_EV_EOF
    finally:
        os.close(w)


def test_refused_connect_is_write_eof_with_errno(kq, ident) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connect is refused
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", port))
            kq.control([write(ident(s))], 0)
            ev = wait_events(kq)[0]
            assert ev.flags & KQ_EV_EOF and ev.fflags == errno.ECONNREFUSED
        finally:
            s.close()


def test_bad_descriptor_is_ebadf(kq, local_only) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    err = kq.control([read(r)], 1, 0)[0]
    assert (err.flags, err.data) == (KQ_EV_ERROR, errno.EBADF)


def test_closed_and_reused_descriptor_never_sees_stale_events(kq, local_only) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    kq.control([read(fd, udata=b"old")], 0)
    b.send(b"stale")
    a.close()
    b.close()
    r, w = os.pipe()  # takes the lowest free numbers: very likely the old one
    try:
        new_fd = r if r == fd else w
        if new_fd != fd:
            pytest.skip("the descriptor number was not reused")
        assert kq.control(None, 4, 0.05) == [], "an event of the closed socket leaked"
        assert kq.control([read(fd, KQ_EV_DELETE)], 1, 0)[0].data == errno.ENOENT
        kq.control([read(r, udata=b"new")], 0)
        os.write(w, b"x")
        assert [e.udata for e in wait_events(kq)] == [b"new"]
    finally:
        os.close(r)
        os.close(w)


def test_close_drops_knotes_of_the_descriptor(kq, local_only) -> None:
    r, w = os.pipe()
    kq.control([read(r), write(w)], 0)
    os.close(w)
    os.close(r)
    assert kq.control(None, 8, 0.05) == []
