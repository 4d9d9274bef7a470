"""Daemon memory per registered knote: resident set growth divided by knotes, per filter.

Each kind goes into its own fresh queue on one fresh daemon; the VNODE and PROC rows include the
descriptor the daemon holds for each (a file, a pidfd), the kernel's share (inotify watches,
pidfds) is not in the RSS. 2,000 VNODE knotes: each holds two or more of the daemon's
descriptors (the opened file and its duplicate), and one principal may hold half of the daemon's
19,000.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import kqclient

from bench import registrations
from bench.daemon import running_daemon
from bench.procstat import rss_bytes
from bench.session import Session
from bench.stats import Cell, Table
from kqd.core import kevent


def measure(session: Session) -> list[Table]:
    """Per filter: knotes, bytes of daemon RSS per knote."""
    scale = 10 if session.quick else 1
    files = session.scratch / "memory"
    sleepers: list[subprocess.Popen] = []

    def proc(kq: kqclient.RemoteKqueue, n: int) -> list[kevent]:
        sleepers.extend(registrations.sleepers(n))
        return registrations.proc(sleepers[-n:])

    kinds: list[tuple[str, int, Callable[[kqclient.RemoteKqueue, int], list[kevent]]]] = [
        ("USER", 50_000 // scale, lambda kq, n: registrations.user(n)),
        ("TIMER", 50_000 // scale, lambda kq, n: registrations.timer(n)),
        ("VNODE", 2_000 // scale, lambda kq, n: registrations.vnode(kq, files / kq.queue_id, n)),
        ("PROC", 1_000 // scale, proc),
    ]
    rows: dict[str, list[Cell] | str] = {}
    try:
        with running_daemon() as daemon, kqclient.connect(daemon.target) as client:
            warm = client.kqueue()  # the first queue pays for imports and pools
            registrations.batched(warm, registrations.user(1000))
            for name, n, make in kinds:
                kq = client.kqueue()
                before = rss_bytes(daemon.pid)
                registrations.batched(kq, make(kq, n))
                rows[name] = [n, (rss_bytes(daemon.pid) - before) / n]
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    header = ["filter", "knotes", "RSS bytes per knote"]
    return [Table("memory", "Daemon memory per knote", header, rows, fmt="{:,.0f}")]
