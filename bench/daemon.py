"""A ``kqd serve`` subprocess for benchmarks, on a Unix socket in a temporary directory."""

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


@dataclass
class Daemon:
    target: str
    pid: int


@contextlib.contextmanager
def running_daemon(*extra: str) -> Iterator[Daemon]:
    """Start the daemon, yield its target and pid, stop it with SIGTERM."""
    with tempfile.TemporaryDirectory(prefix="kqd-bench-") as directory:
        target = f"unix://{Path(directory) / 'kqd.sock'}"
        proc = subprocess.Popen(serve_command(target, *extra))
        try:
            kqclient.wait_for_daemon(target, timeout=30)
            yield Daemon(target, proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
