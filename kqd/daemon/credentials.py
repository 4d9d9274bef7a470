"""Who a process is, as the kernel knows it: one record for a caller, a helper and a policy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Credentials:
    """A uid, its primary gid and supplementary groups, and the process's pid when there is
    one (a Unix-socket peer, from SO_PEERCRED and SO_PEERGROUPS)."""

    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups
    pid: int | None = None


ROOT = Credentials(0, 0, ())
