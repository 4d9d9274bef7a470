"""CallerAccess with real users and real permissions: the kernel decides, as the caller.

Every test runs as root (the daemon's usual identity) and asks for things on behalf of the
unprivileged test users A and B. Nothing is mocked; nothing sleeps for a while hoping it was
enough: waits are for a condition, bounded by WAIT_BOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kqd.daemon.caller_access import CallerAccess, Credentials
from tests.conftest import WAIT_BOUND
from tests.security.users import TestUser, give, shared_gid

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as other users, and giving files to them, needs root"
)
T = TypeVar("T")
MISSING_PID = 2**22 + 12345  # above the largest pid_max Linux allows
ROOT = Credentials(0, 0, ())


def run(scenario: Callable[[CallerAccess], Awaitable[T]], **options: Any) -> T:
    """Run *scenario* with a fresh CallerAccess on a fresh loop, closing it afterwards."""

    async def main() -> T:
        access = CallerAccess(**options)
        try:
            return await scenario(access)
        finally:
            access.close()

    return asyncio.run(main())


def open_as(creds: Credentials, path: Path) -> int:
    return run(lambda access: access.open(creds, str(path)))


def errno_of(call: Callable[[], object]) -> int:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno is not None
    return info.value.errno


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until *condition* holds, failing after WAIT_BOUND seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_BOUND
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"waited {WAIT_BOUND}s for {what}")
        await asyncio.sleep(0.001)


async def exited(pid: int) -> None:
    """Wait until process *pid* has exited (it may still be a zombie)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    loop = asyncio.get_running_loop()
    gone = loop.create_future()

    def readable() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await asyncio.wait_for(gone, WAIT_BOUND)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@pytest.fixture
def secret(open_dir: Path) -> Path:
    """A root-owned 0600 file."""
    path = open_dir / "secret"
    path.write_text("root only")
    return give(path, None, 0o600)


# ---------------------------------------------------------------------------- open


def test_root_only_file_is_eacces(user_a: TestUser, secret: Path) -> None:
    assert errno_of(lambda: open_as(user_a.credentials(), secret)) == errno.EACCES


def test_file_under_another_users_private_directory_is_eacces(
    user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    private = open_dir / "b-private"
    private.mkdir()
    (private / "note").write_text("b's")
    give(private / "note", user_b, 0o644)
    give(private, user_b, 0o700)
    assert errno_of(lambda: open_as(user_a.credentials(), private / "note")) == errno.EACCES
    os.close(open_as(user_b.credentials(), private / "note"))


def test_missing_name_under_a_private_directory_is_eacces_not_enoent(
    user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    (open_dir / "b-private").mkdir()
    private = give(open_dir / "b-private", user_b, 0o700)
    assert errno_of(lambda: open_as(user_a.credentials(), private / "nothing")) == errno.EACCES
    assert errno_of(lambda: open_as(user_b.credentials(), private / "nothing")) == errno.ENOENT


def test_own_private_file_opens(user_a: TestUser, open_dir: Path) -> None:
    path = open_dir / "a-file"
    path.write_text("a's own")
    give(path, user_a, 0o600)
    fd = open_as(user_a.credentials(), path)
    try:
        assert os.read(fd, 100) == b"a's own"
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_group_readable_file_through_a_supplementary_group(
    user_a: TestUser, open_dir: Path
) -> None:
    path = open_dir / "shared"
    path.write_text("for the group")
    give(path, None, 0o640, gid=shared_gid())
    assert shared_gid() in user_a.groups
    fd = open_as(user_a.credentials(), path)
    os.close(fd)
    without = user_a.credentials(groups=())
    assert errno_of(lambda: open_as(without, path)) == errno.EACCES


def test_the_daemons_own_uid_is_served_directly(secret: Path) -> None:
    async def scenario(access: CallerAccess) -> list[int]:
        os.close(await access.open(ROOT, str(secret)))
        return access.helper_pids()

    assert run(scenario) == []


def test_null_byte_in_a_path_is_a_value_error(user_a: TestUser) -> None:
    with pytest.raises(ValueError):
        run(lambda access: access.open(user_a.credentials(), "/etc/hosts\0x"))


# ---------------------------------------------------------------------------- connect


@contextlib.contextmanager
def listener(path: Path, mode: int) -> Iterator[socket.socket]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        give(path, None, mode)
        server.listen()
        server.settimeout(WAIT_BOUND)
        yield server


def test_root_only_unix_socket_is_eacces(user_a: TestUser, open_dir: Path) -> None:
    path = open_dir / "root.sock"
    with listener(path, 0o600):
        creds = user_a.credentials()
        assert errno_of(lambda: run(lambda a: a.connect_unix(creds, str(path)))) == errno.EACCES


def test_open_unix_socket_connects_as_the_caller(user_a: TestUser, open_dir: Path) -> None:
    path = open_dir / "open.sock"

    async def scenario(access: CallerAccess) -> tuple[int, list[int]]:
        return await access.connect_unix(user_a.credentials(), str(path)), access.helper_pids()

    with listener(path, 0o666) as server:
        fd, helpers = run(scenario)
        conn, _ = server.accept()
    with conn, socket.socket(fileno=fd) as client:
        pid, uid, gid = struct.unpack(
            "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        )
        assert (uid, gid) == (user_a.uid, user_a.gid)
        assert pid in helpers
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert not os.get_inheritable(fd)
        client.sendall(b"hi")
        assert conn.recv(2) == b"hi"


def test_connect_without_a_listener_is_the_kernels_errno(user_a: TestUser, open_dir: Path) -> None:
    creds = user_a.credentials()
    missing = str(open_dir / "none.sock")
    assert errno_of(lambda: run(lambda a: a.connect_unix(creds, missing))) == errno.ENOENT
    path = open_dir / "closed.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))
        give(path, None, 0o666)  # bound, never listening
        assert (
            errno_of(lambda: run(lambda a: a.connect_unix(creds, str(path)))) == errno.ECONNREFUSED
        )


# ---------------------------------------------------------------------------- check_getfd


@contextlib.contextmanager
def process(user: TestUser | None = None, gid: int | None = None) -> Iterator[int]:
    """A ``cat`` (it runs until its stdin closes) as *user*, or root."""
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs = {
            "user": user.uid,
            "group": user.gid if gid is None else gid,
            "extra_groups": list(user.groups),
        }
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE, **kwargs) as child:
        try:
            yield child.pid  # Popen returned: the exec is done, the credentials are final
        finally:
            child.kill()


def test_getfd_of_a_root_process_is_refused(user_a: TestUser) -> None:
    with process() as pid, pytest.raises(PermissionError):
        CallerAccess().check_getfd(user_a.credentials(), pid)


def test_getfd_of_the_callers_own_process_is_allowed(user_a: TestUser) -> None:
    access = CallerAccess()
    with process(user_a) as pid:
        access.check_getfd(user_a.credentials(), pid)
        fd = access.getfd(user_a.credentials(), pid, 0)  # cat's stdin: our pipe
        os.close(fd)


def test_getfd_of_the_callers_uid_with_another_gid_is_refused(
    user_a: TestUser, user_b: TestUser
) -> None:
    with process(user_a, gid=user_b.gid) as pid, pytest.raises(PermissionError):
        CallerAccess().check_getfd(user_a.credentials(), pid)


def test_getfd_of_a_non_dumpable_process_is_refused_unless_it_is_the_caller(
    user_a: TestUser,
) -> None:
    # A process that changes its uid without exec'ing afterwards is non-dumpable (the kernel
    # resets dumpability at every change of euid), as a daemon that dropped root is. /proc/<pid>
    # itself still shows the euid (for procps); the files in it show root.
    drop = f"import os; os.setgroups([]); os.setresgid(*[{user_a.gid}] * 3); "
    drop += f"os.setresuid(*[{user_a.uid}] * 3); print(flush=True); os.read(0, 1)"
    command = [sys.executable, "-c", drop]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == b"\n"
            assert os.stat(f"/proc/{child.pid}/status").st_uid == 0, "dumpable after setresuid?"
            access = CallerAccess()
            with pytest.raises(PermissionError, match="dumpable"):
                access.check_getfd(user_a.credentials(), child.pid)
            access.check_getfd(user_a.credentials(pid=child.pid), child.pid)  # itself: allowed
        finally:
            child.kill()


def test_getfd_of_the_daemon_itself_is_refused_even_to_root() -> None:
    access = CallerAccess()
    with pytest.raises(PermissionError):
        access.check_getfd(ROOT, os.getpid())
    with pytest.raises(PermissionError):
        access.check_getfd(Credentials(0, 0, (), pid=os.getpid()), os.getpid())
    started, stop = threading.Event(), threading.Event()
    tid: list[int] = []

    def thread_body() -> None:
        tid.append(threading.get_native_id())
        started.set()
        stop.wait(WAIT_BOUND)

    thread = threading.Thread(target=thread_body)
    thread.start()
    try:
        assert started.wait(WAIT_BOUND)
        with pytest.raises(PermissionError):
            access.check_getfd(ROOT, tid[0])
    finally:
        stop.set()
        thread.join()


def test_getfd_of_a_helper_is_refused_even_to_root(user_a: TestUser, secret: Path) -> None:
    async def scenario(access: CallerAccess) -> None:
        with contextlib.suppress(PermissionError):
            await access.open(user_a.credentials(), str(secret))
        (helper,) = access.helper_pids()
        assert os.stat(f"/proc/{helper}/status").st_uid == 0, "the helper is dumpable"
        with pytest.raises(PermissionError):
            access.check_getfd(ROOT, helper)
        with pytest.raises(PermissionError):  # and not dumpable for its own uid either
            access.check_getfd(user_a.credentials(), helper)

    run(scenario)


def test_getfd_of_a_missing_process_is_esrch(user_a: TestUser) -> None:
    access = CallerAccess()
    with pytest.raises(ProcessLookupError):
        access.check_getfd(user_a.credentials(), MISSING_PID)
    with pytest.raises(ProcessLookupError):
        access.check_getfd(ROOT, MISSING_PID)
    with pytest.raises(ProcessLookupError):
        access.getfd(ROOT, MISSING_PID, 0)


def test_root_may_take_a_root_process_descriptor() -> None:
    access = CallerAccess()
    with process() as pid:
        access.check_getfd(ROOT, pid)


# ---------------------------------------------------------------------------- helpers


def test_two_hundred_opens_stay_bounded(user_a: TestUser, open_dir: Path) -> None:
    path = open_dir / "a-file"
    path.touch()
    give(path, user_a, 0o600)
    creds = user_a.credentials()
    gc.collect()  # descriptors of earlier tests' garbage must not close during the count
    before = fd_count()

    async def scenario(access: CallerAccess) -> None:
        os.close(await access.open(creds, str(path)))
        steady = fd_count()  # the helper's socket, and the loop's own descriptors
        fds = [await access.open(creds, str(path)) for _ in range(200)]
        assert len(set(fds)) == 200 and fd_count() <= steady + 200
        assert len(access.helper_pids()) == 1
        for fd in fds:
            os.close(fd)
        assert fd_count() <= steady
        fds = await asyncio.gather(*(access.open(creds, str(path)) for _ in range(200)))
        assert len(set(fds)) == 200 and len(access.helper_pids()) == 1
        for fd in fds:
            os.close(fd)
        assert fd_count() <= steady

    run(scenario)
    # At most: descriptors of earlier tests (gRPC channels, daemons' pipes) may still close
    # meanwhile; a leak shows as more.
    assert fd_count() <= before


def test_a_killed_helper_fails_its_request_and_is_replaced(user_a: TestUser, secret: Path) -> None:
    creds = user_a.credentials()

    async def scenario(access: CallerAccess) -> None:
        with pytest.raises(PermissionError):
            await access.open(creds, str(secret))
        (first,) = access.helper_pids()
        os.kill(first, signal.SIGSTOP)
        request = asyncio.ensure_future(access.open(creds, str(secret)))
        for _ in range(10):
            await asyncio.sleep(0)  # the request reaches the stopped helper's socket
        os.kill(first, signal.SIGKILL)
        with pytest.raises(OSError, match="exited before answering") as info:
            await request
        assert info.value.errno == errno.EIO
        with pytest.raises(PermissionError):  # a new helper answers
            await access.open(creds, str(secret))
        assert access.helper_pids() not in ([], [first])

    run(scenario)


def test_a_helper_that_does_not_answer_times_out_and_is_replaced(
    user_a: TestUser, secret: Path
) -> None:
    creds = user_a.credentials()

    async def scenario(access: CallerAccess) -> None:
        with pytest.raises(PermissionError):
            await access.open(creds, str(secret))
        (first,) = access.helper_pids()
        os.kill(first, signal.SIGSTOP)  # as stuck as on a hung file system
        with pytest.raises(OSError, match="did not answer") as info:
            await access.open(creds, str(secret))
        assert info.value.errno == errno.ETIMEDOUT
        await exited(first)  # killed, even though it was stopped
        with pytest.raises(PermissionError):
            await access.open(creds, str(secret))

    run(scenario, request_timeout=0.5)


def test_a_cancelled_open_closes_its_descriptor(user_a: TestUser, open_dir: Path) -> None:
    path = open_dir / "a-file"
    path.touch()
    give(path, user_a, 0o600)
    creds = user_a.credentials()

    async def scenario(access: CallerAccess) -> None:
        os.close(await access.open(creds, str(path)))
        (helper,) = access.helper_pids()
        steady = fd_count()
        os.kill(helper, signal.SIGSTOP)
        request = asyncio.ensure_future(access.open(creds, str(path)))
        for _ in range(10):
            await asyncio.sleep(0)
        request.cancel()
        os.kill(helper, signal.SIGCONT)
        fd = await access.open(creds, str(path))  # answered after the cancelled one
        assert fd_count() == steady + 1
        os.close(fd)

    run(scenario)


def test_idle_helpers_are_stopped(user_a: TestUser, secret: Path) -> None:
    async def scenario(access: CallerAccess) -> None:
        with pytest.raises(PermissionError):
            await access.open(user_a.credentials(), str(secret))
        (helper,) = access.helper_pids()
        await exited(helper)
        await until(lambda: access.helper_pids() == [], "the idle helper to be forgotten")

    run(scenario, idle_seconds=0.0)


def test_helpers_are_bounded_least_recently_used_first(
    user_a: TestUser, user_b: TestUser, secret: Path
) -> None:
    async def scenario(access: CallerAccess) -> None:
        pids = []
        for creds in (user_a.credentials(), user_b.credentials(), user_a.credentials(groups=())):
            with pytest.raises(PermissionError):
                await access.open(creds, str(secret))
            pids.append(access.helper_pids())
        assert len(pids[-1]) == 2
        assert pids[0][0] not in pids[-1]  # A's, the least recently used, made room

    run(scenario, max_helpers=2)


def test_too_many_busy_identities_is_eagain(
    user_a: TestUser, user_b: TestUser, secret: Path
) -> None:
    async def scenario(access: CallerAccess) -> None:
        with pytest.raises(PermissionError):
            await access.open(user_a.credentials(), str(secret))
        (helper,) = access.helper_pids()
        os.kill(helper, signal.SIGSTOP)
        busy = asyncio.ensure_future(access.open(user_a.credentials(), str(secret)))
        await asyncio.sleep(0)
        with pytest.raises(BlockingIOError):
            await access.open(user_b.credentials(), str(secret))
        os.kill(helper, signal.SIGCONT)
        with pytest.raises(PermissionError):
            await busy

    run(scenario, max_helpers=1)


def test_closed_access_reaps_its_helpers(user_a: TestUser, secret: Path) -> None:
    async def scenario(access: CallerAccess) -> int:
        with pytest.raises(PermissionError):
            await access.open(user_a.credentials(), str(secret))
        return access.helper_pids()[0]

    helper = run(scenario)
    assert not os.path.exists(f"/proc/{helper}"), "the helper was not reaped by close()"


def test_a_daemon_that_is_not_root_acts_only_as_itself(
    user_a: TestUser, user_b: TestUser, open_dir: Path
) -> None:
    path = open_dir / "a-file"
    path.write_text("a's")
    give(path, user_a, 0o600)
    script = f"""
import asyncio, concurrent.futures.thread, os
from kqd.daemon.caller_access import CallerAccess, Credentials
os.setgroups([])
os.setresgid({user_a.gid}, {user_a.gid}, {user_a.gid})
os.setresuid({user_a.uid}, {user_a.uid}, {user_a.uid})  # everything is imported by now

async def main():
    access = CallerAccess()
    fd = await access.open(Credentials({user_a.uid}, {user_a.gid}, ()), {str(path)!r})
    print(os.read(fd, 10).decode())
    try:
        await access.open(Credentials({user_b.uid}, {user_b.gid}, ()), {str(path)!r})
    except PermissionError as exc:
        print(exc)
    # root could open all the daemon can: served with the daemon's (lesser) rights
    fd = await access.open(Credentials(0, 0, ()), {str(path)!r})
    print(os.read(fd, 10).decode())
    access.close()

asyncio.run(main())
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=WAIT_BOUND
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "a's",
        f"[Errno 1] kqd runs as uid {user_a.uid}, not as root: it cannot act as uid {user_b.uid}",
        "a's",
    ]
