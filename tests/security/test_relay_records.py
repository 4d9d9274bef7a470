"""Another user cannot tell a root kqd who is calling: the relay's name -> credentials records
live in a 0700 directory of the daemon's, where nobody else may create a record, bind a name, or
reach gRPC's private socket (which would make a call with no record, hence no identity)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, relay_process, start_daemon
from tests.security.as_user import run_as
from tests.security.users import SHARED_GROUP, TestUser


@pytest.fixture(scope="module")
def daemon(test_users: tuple[TestUser, TestUser]) -> Iterator[Daemon]:
    directory = Path(tempfile.mkdtemp(prefix="kqd-daemon-"))
    directory.chmod(0o755)  # the users must reach the socket
    daemon = start_daemon(directory, "--socket-group", SHARED_GROUP)
    yield daemon
    assert daemon.stop() == 0
    (directory / "kqd.sock").unlink(missing_ok=True)


def private_directory(daemon: Daemon) -> Path:
    """The relay's private directory, from its process's command line."""
    return Path(relay_process(daemon.process.pid)[1][-2])


def test_the_private_directory_is_roots_alone(daemon: Daemon) -> None:
    status = private_directory(daemon).stat()
    assert (status.st_uid, status.st_mode & 0o777) == (os.geteuid(), 0o700)


def test_another_user_cannot_plant_a_record_or_a_name(
    daemon: Daemon, user_a: TestUser, open_dir: Path
) -> None:
    directory = private_directory(daemon)
    program = f"""
    directory = {str(directory)!r}
    def plant():
        fd = os.open(directory + "/c1.999.cred", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"0 0 1\\n")
    def bind():
        socket.socket(socket.AF_UNIX).bind(directory + "/c1.999")
    def reach_grpc():
        socket.socket(socket.AF_UNIX).connect(directory + "/grpc.sock")
    say(plant=outcome(plant), bind=outcome(bind), grpc=outcome(reach_grpc),
        listing=outcome(lambda: os.listdir(directory)),
        own_call=outcome(lambda: client.kqueue().close() or "made and closed a queue"))
    """
    got = run_as(user_a, daemon.target, program, open_dir)
    for attempt in ("plant", "bind", "grpc", "listing"):
        assert got[attempt].get("errno") == 13, got  # EACCES
    assert got["own_call"] == {"ok": "made and closed a queue"}, got
    assert not (directory / "c1.999.cred").exists()
