"""EVFILT_VNODE hints are recorded whole, as FreeBSD's filt_vfsvnode does.

A filesystem operation posts its notes together (a growing write NOTE_WRITE|NOTE_EXTEND, mkdir
NOTE_WRITE|NOTE_LINK on the parent, ...); a knote that asked for any of them gets all of them, and
a knote that asked for none gets nothing.
"""

from __future__ import annotations

import os
import tempfile

from kqd.core import KQ_NOTE_ATTRIB, KQ_NOTE_EXTEND, KQ_NOTE_LINK, KQ_NOTE_WRITE
from tests.conformance.test_vnode import make_file, notes, watching
from tests.conftest import wait_events


def test_an_append_watched_for_write_alone_reports_extend_too(kq, backend, tmp_path) -> None:
    path = str(tmp_path / "f")
    make_file(path, b"data")
    with watching(kq, backend) as watch:
        watch(path, KQ_NOTE_WRITE)
        with open(path, "ab") as f:
            f.write(b"more")
        assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND
        with open(path, "r+b") as f:
            f.write(b"D")
        assert notes(kq) == KQ_NOTE_WRITE, "no growth, no NOTE_EXTEND"


def test_mkdir_watched_for_write_alone_reports_link_too(kq, backend, tmp_path) -> None:
    with watching(kq, backend) as watch:
        watch(str(tmp_path), KQ_NOTE_WRITE)
        os.mkdir(tmp_path / "sub")
        assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_LINK
        make_file(str(tmp_path / "f"))
        assert notes(kq) == KQ_NOTE_WRITE
        os.rmdir(tmp_path / "sub")
        assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_LINK


def test_a_rename_out_watched_for_write_alone_reports_extend_too(kq, backend, tmp_path) -> None:
    make_file(str(tmp_path / "f"))
    with watching(kq, backend) as watch, tempfile.TemporaryDirectory() as other:
        watch(str(tmp_path), KQ_NOTE_WRITE)
        os.rename(tmp_path / "f", os.path.join(other, "f"))
        assert notes(kq) == KQ_NOTE_WRITE | KQ_NOTE_EXTEND


def test_a_hint_without_a_wanted_note_is_not_reported(kq, backend, tmp_path) -> None:
    directory, path = tmp_path / "d", str(tmp_path / "f")
    os.mkdir(directory)
    make_file(path)
    with watching(kq, backend) as watch, tempfile.TemporaryDirectory() as other:
        watch(str(directory), KQ_NOTE_EXTEND)
        watch(path, KQ_NOTE_ATTRIB)
        os.mkdir(directory / "sub")  # NOTE_WRITE|NOTE_LINK: nothing for NOTE_EXTEND
        make_file(str(directory / "new"))  # NOTE_WRITE
        with open(path, "ab") as f:  # NOTE_WRITE|NOTE_EXTEND, but on the NOTE_ATTRIB knote
            f.write(b"x")
        os.rename(directory / "new", os.path.join(other, "new"))  # NOTE_WRITE|NOTE_EXTEND
        os.chmod(path, 0o600)  # NOTE_ATTRIB
        seen = {}
        while len(seen) < 2:
            for ev in wait_events(kq):
                seen[ev.ident] = seen.get(ev.ident, 0) | ev.fflags
        assert sorted(seen.values()) == [KQ_NOTE_WRITE | KQ_NOTE_EXTEND, KQ_NOTE_ATTRIB]
        assert kq.control(None, 8, 0.2) == []
