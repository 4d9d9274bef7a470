"""One caller's slow or heavy request never holds up another's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import kqclient
import pytest

from kqd.daemon.server import serve_command
from tests.conftest import WAIT_BOUND


def test_a_slow_resolver_does_not_delay_another_client(tmp_path: Path) -> None:
    """A daemon whose name server never answers (a private mount namespace gives it its own
    resolv.conf): one client's OpenConnection to a host name waits out the lookup bound and
    fails with ETIMEDOUT; meanwhile another client's calls keep their usual pace."""
    if shutil.which("unshare") is None or not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("needs unshare(1)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.77", 53))  # reads queries, answers none
        resolv = tmp_path / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.77\noptions timeout:8 attempts:1\n")
        target = f"unix://{tmp_path}/kqd.sock"
        command = " ".join(serve_command(target))
        daemon = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", f"mount --bind {resolv} /etc/resolv.conf && "
             f"exec {command}"],
        )  # fmt: skip
        try:
            try:
                kqclient.wait_for_daemon(target, timeout=WAIT_BOUND)
            except kqclient.DaemonUnavailable:
                pytest.skip("cannot run kqd in a private mount namespace here")
            with kqclient.connect(target) as slow, kqclient.connect(target) as other:
                outcome: dict[str, BaseException] = {}

                def connect() -> None:
                    try:
                        slow.kqueue().open_connection("never-answers.kqd.test:80")
                    except OSError as exc:
                        outcome["error"] = exc

                lookup = threading.Thread(target=connect)
                lookup.start()
                kq = other.kqueue()
                worst = 0.0
                while lookup.is_alive():
                    start = time.perf_counter()
                    kq.control(None, 1, 0)
                    worst = max(worst, time.perf_counter() - start)
                    lookup.join(0.05)
                assert isinstance(outcome.get("error"), TimeoutError), outcome
                assert worst < 1.0, f"another client waited {worst:.2f}s during the lookup"
        finally:
            daemon.terminate()
            assert daemon.wait(WAIT_BOUND) == 0, "a hung lookup must not hold up the exit"
