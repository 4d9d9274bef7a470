"""Fixtures shared by every test: the kqueue backends and bounded waiting."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kqclient
import pytest

import kqd.core
from kqd.daemon.server import serve_command

WAIT_BOUND = 10.0  # seconds: a test fails with a message past this, it never sleeps instead


@dataclass
class Backend:
    """One implementation of the kqueue API under test, and how idents name descriptors there."""

    name: str
    kqueue: Callable[[], Any]
    local: bool  # True when idents are this process's descriptors and signals go to it

    def open_path(self, kq: Any, path: str) -> int:
        """A read-only descriptor ident for *path*, in the backend's descriptor table."""
        return os.open(path, os.O_RDONLY) if self.local else kq.open(path)

    def adopt(self, kq: Any, fd: int) -> int:
        """The ident under which the backend sees this process's descriptor *fd*."""
        return fd if self.local else kq.open_peer_fd(os.getpid(), fd)

    def close_fd(self, kq: Any, fd: int) -> None:
        if self.local:
            os.close(fd)
        else:
            kq.close_fd(fd)


@dataclass
class Daemon:
    """A real ``kqd serve`` subprocess on a Unix socket."""

    target: str
    socket: Path
    process: subprocess.Popen

    def wait_for_log(self, text: str) -> bool:
        """Read the daemon's log until a line contains *text*; False if it ends first."""
        assert self.process.stderr is not None, "start_daemon(..., log_level=...) captures logs"
        return any(text in line for line in self.process.stderr)

    def stop(self) -> int:
        """SIGTERM, and the exit status (failing the test if it does not exit in time)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(WAIT_BOUND)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"kqd serve did not exit within {WAIT_BOUND}s of SIGTERM")


def free_tcp_port() -> int:
    """A loopback port nobody listens on now (the daemon under test binds it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_daemon(
    directory: Path,
    *extra: str,
    log_level: str | None = None,
    target: str | None = None,
    tls: kqclient.TlsClientFiles | None = None,
) -> Daemon:
    """Start ``kqd serve`` on *target* (default: a Unix socket in *directory*); with
    *log_level*, its log is captured for ``wait_for_log``; *tls*: how to reach a TLS target."""
    sock = directory / "kqd.sock"
    target = target or f"unix://{sock}"
    proc = subprocess.Popen(
        serve_command(target, *extra, log_level=log_level or "warning", state=directory / "state"),
        stderr=subprocess.PIPE if log_level else None,
        text=True,
    )
    try:
        kqclient.wait_for_daemon(target, timeout=WAIT_BOUND, tls=tls)
    except kqclient.DaemonUnavailable as exc:
        proc.kill()
        pytest.fail(str(exc))
    return Daemon(target, sock, proc)


@pytest.fixture(scope="session")
def daemon_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real ``kqd serve`` for the whole session. Every test calls it as the same principal
    (this process's uid), so the session's queues and changes add up in one principal's
    quotas: the policy raises them out of the way (tests/security tests quotas on their own)."""
    directory = tmp_path_factory.mktemp("kqd")
    policy = directory / "policy.toml"
    policy.write_text(
        "[defaults.quotas]\nqueues = 100000\nchanges_per_second = 100000000\n"
        "min_timer_period_ms = 0\n"
    )
    daemon = start_daemon(directory, "--policy", str(policy))
    yield daemon.target
    assert daemon.stop() == 0, "kqd serve did not exit cleanly on SIGTERM"


@pytest.fixture(params=["core", "remote"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "core":
        yield Backend("core", kqd.core.kqueue, local=True)
        return
    import kqclient

    with kqclient.connect(request.getfixturevalue("daemon_target")) as client:
        yield Backend("remote", client.kqueue, local=False)


@pytest.fixture
def kq(backend: Backend) -> Iterator[Any]:
    queue = backend.kqueue()
    yield queue
    queue.close()


def wait_events(kq: Any, count: int = 1, bound: float = WAIT_BOUND, max_events: int = 64) -> list:
    """Collect at least *count* events, failing with what arrived if *bound* seconds pass."""
    import time

    deadline = time.monotonic() + bound
    got: list = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"waited {bound}s for {count} event(s), got {len(got)}: {got}")
        got += kq.control(None, max_events, remaining)
    return got


@dataclass
class Orphan:
    """A process that is not our child; it exits with *code* when released."""

    pid: int
    release_fd: int

    def release(self) -> None:
        os.close(self.release_fd)


def spawn_orphan(code: int = 0) -> Orphan:
    r, w = os.pipe()
    # The background job reads the pipe as stdin (moved through fd 3: a non-interactive shell
    # gives background jobs /dev/null as stdin unless redirected explicitly).
    script = f"exec 3<&0; sh -c 'read x; exit {code}' <&3 >/dev/null 2>&1 & echo $!"
    out = subprocess.run(
        ["sh", "-c", script],
        stdin=r,
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT_BOUND,
    )
    os.close(r)
    return Orphan(int(out.stdout.strip()), w)


@pytest.fixture
def orphan_factory() -> Iterator[Callable[[int], Orphan]]:
    made: list[Orphan] = []

    def make(code: int = 0) -> Orphan:
        orphan = spawn_orphan(code)
        made.append(orphan)
        return orphan

    yield make
    for orphan in made:
        with contextlib.suppress(OSError):
            orphan.release()


def sleeper() -> subprocess.Popen:
    """A child that runs until killed or its stdin closes; returned once it is running Python
    (so its exec is over: the proc connector reports an exec slightly after the parent sees it)."""
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def relay_process(daemon_pid: int) -> tuple[int, list[str]]:
    """The pid and command line of *daemon_pid*'s peer-credential relay process (read from
    /proc: its children whose command runs relay_process.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue  # gone meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == daemon_pid and any(
            arg.endswith("relay_process.py") for arg in argv
        ):
            found.append((int(entry.name), argv))
    assert len(found) == 1, f"expected one relay process of {daemon_pid}, found {found}"
    return found[0]


def wait_gone(pid: int, bound: float = WAIT_BOUND) -> None:
    """Wait (bounded) until process *pid*, not necessarily a child, has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], bound)[0], f"process {pid} still runs"
    finally:
        os.close(pidfd)
