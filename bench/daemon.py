"""A ``kqd serve`` subprocess for benchmarks, on a Unix socket in a temporary directory, with
bench/policy.toml (quotas large enough for the benchmarks' loads)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import kqclient

from kqd.daemon.server import serve_command

POLICY = Path(__file__).with_name("policy.toml")


@dataclass
class Daemon:
    target: str
    pid: int


def command(target: str, state: Path | None) -> list[str]:
    """``kqd serve`` as a user runs it: with a state directory (durable queues), as by
    default (*state* None: ``--no-state``); ``python -m bench state`` says what state costs."""
    return serve_command(target, "--policy", str(POLICY), state=state)


@contextlib.contextmanager
def running_daemon(*, durable: bool = True) -> Iterator[Daemon]:
    """Start the daemon (keeping state unless not *durable*), yield its target and pid, stop
    it with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="kqd-bench-") as directory:
        target = f"unix://{Path(directory) / 'kqd.sock'}"
        proc = subprocess.Popen(command(target, Path(directory) / "state" if durable else None))
        try:
            kqclient.wait_for_daemon(target, timeout=30)
            yield Daemon(target, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
