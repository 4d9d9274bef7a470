"""Fixtures for the security tests: real unprivileged users, and a directory they can reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security import users
from tests.security.users import TestUser


@pytest.fixture(scope="session")
def test_users() -> tuple[TestUser, TestUser]:
    """Two unprivileged users (A, B), made once; the test is skipped, with the reason, when
    that cannot be done here (not root, no useradd)."""
    reason = users.why_not()
    if reason:
        pytest.skip(reason)
    return users.ensure_users()


@pytest.fixture
def user_a(test_users: tuple[TestUser, TestUser]) -> TestUser:
    return test_users[0]


@pytest.fixture
def user_b(test_users: tuple[TestUser, TestUser]) -> TestUser:
    return test_users[1]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh 0755 directory that every user can reach (pytest's tmp_path sits under a 0700
    directory, so other users could never get to anything in it)."""
    path = Path(tempfile.mkdtemp(prefix="kqd-security-"))
    try:
        for parent in [path.parent, *path.parent.parents]:
            if not parent.stat().st_mode & 0o001:
                pytest.skip(f"{parent} is not searchable by other users: set TMPDIR elsewhere")
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
