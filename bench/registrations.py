"""Knotes of each kind for the idle and memory benchmarks: none of them fires while measured."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kqclient

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


def user(n: int) -> list[kevent]:
    return [kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(n)]


def timer(n: int) -> list[kevent]:
    """Timers of an hour: registered, never expiring during a benchmark."""
    return [kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600) for i in range(n)]


def vnode(kq: kqclient.RemoteKqueue, directory: Path, n: int) -> list[kevent]:
    """NOTE_WRITE on *n* new empty files, opened into the queue's descriptor table."""
    directory.mkdir(parents=True, exist_ok=True)
    changes = []
    for i in range(n):
        path = directory / f"f{i}"
        path.write_bytes(b"")
        changes.append(
            kevent(kq.open(str(path)), KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)
        )
    return changes


def sleepers(n: int) -> list[subprocess.Popen]:
    """*n* processes that live for an hour (the caller kills them)."""
    return [subprocess.Popen(["sleep", "3600"]) for _ in range(n)]


def proc(processes: list[subprocess.Popen]) -> list[kevent]:
    return [kevent(p.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for p in processes]


def batched(kq: kqclient.RemoteKqueue, changes: list[kevent]) -> None:
    """Register *changes* in calls of at most 10,000 (the daemon's limit per call)."""
    for start in range(0, len(changes), 10_000):
        kq.control(changes[start : start + 10_000], 0)
