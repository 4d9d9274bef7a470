"""EVFILT_VNODE on files and directories."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from collections.abc import Callable, Iterator

import pytest

from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_ERROR,
    KQ_FILTER_VNODE,
    KQ_NOTE_ATTRIB,
    KQ_NOTE_CLOSE,
    KQ_NOTE_CLOSE_WRITE,
    KQ_NOTE_DELETE,
    KQ_NOTE_EXTEND,
    KQ_NOTE_LINK,
    KQ_NOTE_OPEN,
    KQ_NOTE_READ,
    KQ_NOTE_RENAME,
    KQ_NOTE_WRITE,
    kevent,
)
from tests.conftest import wait_events

ALL = (
    KQ_NOTE_DELETE | KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_ATTRIB | KQ_NOTE_LINK | KQ_NOTE_RENAME
)


@pytest.fixture
def workdir() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield d


@contextlib.contextmanager
def watching(kq, backend) -> Iterator[Callable[..., int]]:
    """watch(path, notes, flags): open *path* in the backend's table and add a VNODE knote;
    the descriptors are closed on leaving."""

    opened: list[int] = []

    def add(path: str, notes: int = ALL, flags: int = KQ_EV_ADD | KQ_EV_CLEAR) -> int:
        fd = backend.open_path(kq, path)
        opened.append(fd)
        kq.control([kevent(fd, KQ_FILTER_VNODE, flags, notes, 0, b"v")], 0)
        return fd

    try:
        yield add
    finally:
        for fd in opened:
            backend.close_fd(kq, fd)


@pytest.fixture
def watch(kq, backend) -> Iterator[Callable[..., int]]:
    with watching(kq, backend) as add:
        yield add


def notes(kq) -> int:
    return wait_events(kq)[0].fflags


def make_file(path: str, content: bytes = b"") -> None:
    with open(path, "wb") as f:
        f.write(content)


def test_write_and_extend(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path)
    with open(path, "ab") as f:
        f.write(b"more")
    assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
    with open(path, "r+b") as f:
        f.write(b"M")  # overwrite in place: no growth
    assert notes(kq) == KQ_NOTE_WRITE


def test_attrib(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path)
    os.chmod(path, 0o600)
    assert notes(kq) == KQ_NOTE_ATTRIB


def test_link_and_delete(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path)
    os.link(path, path + ".2")
    assert notes(kq) == KQ_NOTE_LINK
    os.unlink(path + ".2")
    assert notes(kq) == KQ_NOTE_LINK
    os.unlink(path)
    assert notes(kq) == KQ_NOTE_DELETE


def test_rename_follows_the_file(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path)
    os.rename(path, path + ".moved")
    assert notes(kq) == KQ_NOTE_RENAME
    with open(path + ".moved", "ab") as f:
        f.write(b"x")
    assert notes(kq) & KQ_NOTE_WRITE, "the knote follows the inode across the rename"


def test_directory_entries(kq, workdir, watch) -> None:
    watch(workdir)
    make_file(os.path.join(workdir, "new"))
    assert notes(kq) == KQ_NOTE_WRITE
    os.mkdir(os.path.join(workdir, "sub"))
    assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_LINK
    os.rename(os.path.join(workdir, "new"), os.path.join(workdir, "renamed"))
    assert notes(kq) == KQ_NOTE_WRITE, "a rename within the directory is not NOTE_EXTEND"
    with tempfile.TemporaryDirectory() as other:
        os.rename(os.path.join(workdir, "renamed"), os.path.join(other, "out"))
        assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND


EVERY_NOTE = ALL | KQ_NOTE_OPEN | KQ_NOTE_READ | KQ_NOTE_CLOSE | KQ_NOTE_CLOSE_WRITE


def test_a_directory_does_not_report_its_entries_own_changes(kq, workdir, watch) -> None:
    inside = os.path.join(workdir, "f")
    make_file(inside, b"data")
    watch(workdir, EVERY_NOTE)
    os.chmod(inside, 0o600)
    with open(inside, "ab") as f:
        f.write(b"more")
    with open(inside, "rb") as f:
        f.read()
    os.chmod(workdir, 0o755)  # queued after the entry's events: they were read before it
    assert notes(kq) == KQ_NOTE_ATTRIB, "only the directory's own chmod"
    assert kq.control(None, 8, 0.2) == []


def test_touch_in_a_directory_is_one_write(kq, workdir, watch) -> None:
    watch(workdir, EVERY_NOTE)
    path = os.path.join(workdir, "new")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # what touch(1) does: open, utimensat
    os.utime(fd)
    os.close(fd)
    assert notes(kq) == KQ_NOTE_WRITE
    os.chmod(workdir, 0o755)
    assert notes(kq) == KQ_NOTE_ATTRIB, "the new entry's open, utime and close reported nothing"
    assert kq.control(None, 8, 0.2) == []


def test_open_read_close_notes(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path, b"data")
    watch(path, KQ_NOTE_OPEN | KQ_NOTE_READ | KQ_NOTE_CLOSE | KQ_NOTE_CLOSE_WRITE)
    with open(path, "rb") as f:
        f.read()
    seen = 0
    while seen != KQ_NOTE_OPEN | KQ_NOTE_READ | KQ_NOTE_CLOSE:
        seen |= notes(kq)
    with open(path, "ab") as f:
        f.write(b"x")
    seen = 0
    while not seen & KQ_NOTE_CLOSE_WRITE:
        seen |= notes(kq)


def test_only_requested_notes_are_reported(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path, KQ_NOTE_ATTRIB)
    with open(path, "ab") as f:
        f.write(b"x")
    assert kq.control(None, 4, 0.05) == []
    os.chmod(path, 0o644)
    assert notes(kq) == KQ_NOTE_ATTRIB


def test_without_clear_a_fired_vnode_knote_repeats(kq, workdir, watch) -> None:
    path = os.path.join(workdir, "f")
    make_file(path)
    watch(path, flags=KQ_EV_ADD)
    os.chmod(path, 0o600)
    assert notes(kq) == KQ_NOTE_ATTRIB
    assert [e.fflags for e in kq.control(None, 4, 0)] == [KQ_NOTE_ATTRIB]


def test_pipe_or_socket_is_einval(kq, backend) -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        errs = kq.control(
            [
                kevent(backend.adopt(kq, r), KQ_FILTER_VNODE, KQ_EV_ADD, KQ_NOTE_WRITE),
                kevent(backend.adopt(kq, a.fileno()), KQ_FILTER_VNODE, KQ_EV_ADD, KQ_NOTE_WRITE),
            ],
            2,
            0,
        )
        assert [(e.flags, e.data) for e in errs] == [(KQ_EV_ERROR, errno.EINVAL)] * 2
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def _open_descriptors() -> list[str]:
    targets = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            targets.append(os.readlink(f"/proc/self/fd/{name}"))
    return targets


def test_many_knotes_share_one_inotify_instance(kq, workdir, watch, backend) -> None:
    if not backend.local:
        pytest.skip("counts this process's descriptors")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(20):
        path = os.path.join(workdir, f"f{i}")
        make_file(path)
        watch(path)
    inotify = [target for target in _open_descriptors() if target == "anon_inode:inotify"]
    assert len(inotify) <= 1, "one inotify instance for all knotes"
    assert len(os.listdir("/proc/self/fd")) - before <= 20 * 2 + 1
