"""Daemon memory per registered knote: resident set growth divided by knotes, per filter.

Each kind goes into its own fresh queue on one fresh daemon; the VNODE and PROC rows include the
descriptor the daemon holds for each (a file, a pidfd), the kernel's share (inotify watches,
pidfds) is not in the RSS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import kqclient

from bench.daemon import running_daemon
from bench.procstat import rss_bytes
from bench.session import Session
from kqd.core import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_TIMER,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_NOTE_EXIT,
    KQ_NOTE_SECONDS,
    KQ_NOTE_WRITE,
    kevent,
)


def _batched(kq: kqclient.RemoteKqueue, changes: list[kevent]) -> None:
    for start in range(0, len(changes), 10_000):
        kq.control(changes[start : start + 10_000], 0)


def measure(session: Session) -> list[tuple[str, int, float]]:
    """(filter, knotes, bytes of daemon RSS per knote)."""
    scale = 10 if session.quick else 1
    files = session.scratch / "memory"
    files.mkdir()
    sleepers: list[subprocess.Popen] = []

    def user(kq: kqclient.RemoteKqueue, n: int) -> list[kevent]:
        return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(n)]

    def timer(kq: kqclient.RemoteKqueue, n: int) -> list[kevent]:
        return [kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600) for i in range(n)]

    def vnode(kq: kqclient.RemoteKqueue, n: int) -> list[kevent]:
        changes = []
        for i in range(n):
            path = files / f"{id(kq)}-{i}"
            path.write_bytes(b"")
            changes.append(
                kevent(kq.open(str(path)), KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)
            )
        return changes

    def proc(kq: kqclient.RemoteKqueue, n: int) -> list[kevent]:
        sleepers.extend(subprocess.Popen(["sleep", "3600"]) for _ in range(n))
        return [kevent(p.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for p in sleepers[-n:]]

    kinds: list[tuple[str, int, Callable[[kqclient.RemoteKqueue, int], list[kevent]]]] = [
        ("USER", 50_000 // scale, user),
        ("TIMER", 50_000 // scale, timer),
        ("VNODE", 5_000 // scale, vnode),
        ("PROC", 1_000 // scale, proc),
    ]
    rows = []
    try:
        with running_daemon() as daemon, kqclient.connect(daemon.target) as client:
            warm = client.kqueue()  # the first queue pays for imports and pools
            _batched(warm, user(warm, 1000))
            for name, n, make in kinds:
                kq = client.kqueue()
                before = rss_bytes(daemon.pid)
                _batched(kq, make(kq, n))
                rows.append((name, n, (rss_bytes(daemon.pid) - before) / n))
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    return rows
