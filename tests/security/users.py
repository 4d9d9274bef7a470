"""Two unprivileged test users, made with useradd once and reused afterwards.

The users are system users without a home directory, each with its own primary group, and both
members of one shared group (for tests of supplementary groups). They are left in place: making
them again is a no-op, and another test session on the same machine may be using them.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kqd.daemon.credentials import Credentials

NAMES = ("kqd-test-a", "kqd-test-b")
SHARED_GROUP = "kqd-test-shared"


@dataclass(frozen=True)
class TestUser:
    """A test user: its name, uid, primary gid and supplementary groups."""

    __test__ = False  # not a test class, whatever pytest's name rules say

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    def credentials(
        self, *, groups: tuple[int, ...] | None = None, pid: int | None = None
    ) -> Credentials:
        """The credentials a process of this user would show (its groups unless *groups*)."""
        return Credentials(self.uid, self.gid, self.groups if groups is None else groups, pid)


def why_not() -> str | None:
    """Why the test users cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "the test users need root (useradd, and acting as another uid)"
    missing = [tool for tool in ("useradd", "groupadd") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found (Debian's passwd package)"
    return None


def _run(*command: str) -> None:
    """Run useradd/groupadd; "already exists" (another session made it first) is fine."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode not in (0, 9):  # 9: the name is taken
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def ensure_users() -> tuple[TestUser, TestUser]:
    """Users A and B, made when missing (call :func:`why_not` first)."""
    try:
        grp.getgrnam(SHARED_GROUP)
    except KeyError:
        _run("groupadd", "--system", SHARED_GROUP)
    users = []
    for name in NAMES:
        try:
            pwd.getpwnam(name)
        except KeyError:
            _run(
                "useradd", "--system", "--no-create-home", "--user-group",
                "--shell", "/usr/sbin/nologin", "--groups", SHARED_GROUP, name,
            )  # fmt: skip
        entry = pwd.getpwnam(name)
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise RuntimeError(f"test user {name} has uid or gid 0")
        groups = tuple(sorted(set(os.getgrouplist(name, entry.pw_gid)) - {entry.pw_gid}))
        users.append(TestUser(name, entry.pw_uid, entry.pw_gid, groups))
    return users[0], users[1]


def shared_gid() -> int:
    return grp.getgrnam(SHARED_GROUP).gr_gid


def give(path: Path, user: TestUser | None, mode: int, gid: int | None = None) -> Path:
    """Give *path* to *user* (root when None) with *mode*, and group *gid* when given."""
    os.chown(path, user.uid if user else 0, gid if gid is not None else (user.gid if user else 0))
    path.chmod(mode)
    return path
