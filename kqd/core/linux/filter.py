"""The filter interface: FreeBSD's ``struct filterops`` as a small Python class.

One subclass per filter, one instance per kqueue. The engine calls ``attach`` when a knote is
created, ``touch`` when EV_ADD modifies it, ``event`` to ask whether the object's state warrants
delivery (with the hint a source passed, or None for "look again"), ``report`` to build the
fflags/data of a delivered event, and ``detach`` when the knote goes away. Filters raise
``OSError`` with the errno kqueue would give; the engine turns it into an EV_ERROR entry.

``snapshot`` and ``restore`` carry a knote across a restart of its host: ``restore`` stands in
for ``attach`` on a knote re-created from a snapshot, possibly in another process, another day.
Whatever a filter re-arms on must be checked to be the same object, not merely the same number:
a pid or a descriptor number may name something else by then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kqd.core.constants import KQ_EV_CLEAR

if TYPE_CHECKING:
    from kqd.core.kevent import kevent
    from kqd.core.linux.knote import Knote
    from kqd.core.linux.kqueue import Kqueue


class Filter:
    """Base filterops. ``is_fd`` filters take a descriptor as ident (EBADF when it is not one)."""

    is_fd = False

    def __init__(self, kq: Kqueue) -> None:
        self.kq = kq

    def attach(self, kn: Knote) -> None:
        """Start watching the object; raise OSError(errno) to refuse the knote."""

    def detach(self, kn: Knote) -> None:
        """Stop watching; release whatever attach acquired. Called once per knote."""

    def event(self, kn: Knote, hint: object) -> bool:
        """Fold *hint* (None: just look again) into kn.fflags/kn.data; is the knote active?"""
        raise NotImplementedError

    def snapshot(self, kn: Knote) -> dict[str, Any]:
        """What ``restore`` needs to resume *kn*, JSON-serializable; by default nothing."""
        return {}

    def restore(self, kn: Knote, state: dict[str, Any]) -> None:
        """Attach *kn*, re-created from a snapshot, and fold in *state* (what ``snapshot``
        returned). The default attaches afresh: the filter reads the object's real state.
        Raise OSError(errno) as ``attach`` does, having released what was acquired."""
        self.attach(kn)

    def touch(self, kn: Knote, change: kevent) -> None:
        """EV_ADD on an existing knote: take the new NOTE mask and data."""
        kn.sfflags = change.fflags
        kn.sdata = change.data

    def report(self, kn: Knote) -> tuple[int, int]:
        """The (fflags, data) to deliver; EV_CLEAR resets the state once it is read."""
        fflags, data = kn.fflags, kn.data
        if kn.flags & KQ_EV_CLEAR:
            kn.fflags = kn.data = 0
        return fflags, data
