"""An inotify queue overflow reports what really changed, and nothing on untouched objects.

The overflow is real: the kernel queue (max_queued_events) is filled by opening a watched file
while no kqueue reads it, so the changes made next are dropped by the kernel and must be
recovered from the objects' state.
"""

from __future__ import annotations

import os
from pathlib import Path

from kqd.core import (
    KQ_NOTE_ATTRIB,
    KQ_NOTE_CLOSE,
    KQ_NOTE_EXTEND,
    KQ_NOTE_LINK,
    KQ_NOTE_OPEN,
    KQ_NOTE_WRITE,
)
from kqd.core.linux.inotify_hub import InotifyHub
from tests.conformance.test_vnode import ALL, make_file, watching
from tests.conftest import wait_events

MAX_QUEUED_EVENTS = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def collect(kq, until: int, seen: dict[int, tuple[int, int]]) -> None:
    """Merge events into *seen* (ident: (fflags, data)) until *until* has reported."""
    while until not in seen:
        for ev in wait_events(kq):
            fflags, data = seen.get(ev.ident, (0, 0))
            seen[ev.ident] = (fflags | ev.fflags, data + ev.data)


def test_an_overflow_reports_only_what_really_changed(kq, backend, tmp_path) -> None:
    noisy, bystander, changed, marker = (str(tmp_path / name) for name in "nbcm")
    directory = tmp_path / "d"
    directory.mkdir()
    for path in (noisy, bystander, changed, marker):
        make_file(path, b"data")
    overflows = InotifyHub.shared().overflows if backend.local else 0
    with watching(kq, backend) as watch:
        noisy_fd = watch(noisy, KQ_NOTE_OPEN | KQ_NOTE_CLOSE)
        watch(bystander, ALL)
        changed_fd = watch(changed, ALL)
        directory_fd = watch(str(directory), ALL)
        marker_fd = watch(marker, KQ_NOTE_ATTRIB)
        for _ in range(MAX_QUEUED_EVENTS):  # an open and a close each: twice what fits
            os.close(os.open(noisy, os.O_RDONLY))
        with open(changed, "ab") as f:  # the queue is full: these events are dropped
            f.write(b"grown")
        os.link(changed, changed + ".2")
        os.mkdir(directory / "sub")
        seen: dict[int, tuple[int, int]] = {}
        collect(kq, directory_fd, seen)
        os.chmod(marker, 0o600)  # read after the overflow was: everything before it was seen
        collect(kq, marker_fd, seen)
        assert kq.control(None, 8, 0.2) == []
    assert {ident: fflags for ident, (fflags, _) in seen.items()} == {
        noisy_fd: KQ_NOTE_OPEN | KQ_NOTE_CLOSE,  # its events from before the overflow
        changed_fd: KQ_NOTE_WRITE | KQ_NOTE_EXTEND | KQ_NOTE_LINK,
        directory_fd: KQ_NOTE_WRITE | KQ_NOTE_LINK,
        marker_fd: KQ_NOTE_ATTRIB,
    }, "the untouched file reports nothing"
    recovered = {ident: data for ident, (_, data) in seen.items()}
    assert recovered == {noisy_fd: 0, changed_fd: 1, directory_fd: 1, marker_fd: 0}
    if backend.local:
        assert InotifyHub.shared().overflows > overflows, "the queue really overflowed"
