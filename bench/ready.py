"""When a trial may start: its target is ready and its waiter is waiting, as /proc shows them.

Nothing is timed before both: a process to wait for must be blocked on its pipe, and a waiter
(a command, or a thread of this process) must have finished starting and registering. Most
waiters cannot say so themselves, so readiness is read from /proc: a waiter is *quiet* when no
thread of it (or of its descendants, or of the processes it talks to, such as the daemon) starts,
ends, or uses more than SHARE of a core over WINDOW; a retrying waiter is *pausing* once the
thread that runs it (or a child process, as wait-for-it's sleep) sleeps between tries, i.e. after
its first refused try.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

BOUND = 30.0  # seconds before a waiter that never gets ready is an error
WINDOW = 0.02
SHARE = 0.05  # gRPC processes wake every ~20 ms for ~40 µs even when idle

Tasks = Callable[[], list[Path]]  # /proc task directories, looked up again at every check
Readiness = Callable[[Tasks], Callable[[], bool]]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the task ended
        return ""


def process_tasks(*pids: int) -> list[Path]:
    """Every thread of *pids* and of their descendants."""
    found, pending = [], list(pids)
    while pending:
        try:
            tasks = [Path(entry.path) for entry in os.scandir(f"/proc/{pending.pop()}/task")]
        except OSError:  # the process ended
            continue
        for task in tasks:
            found.append(task)
            pending += [int(child) for child in _read(task / "children").split()]
    return found


def own_thread(tid: int) -> list[Path]:
    return [Path(f"/proc/self/task/{tid}")]


def _cpu_ns(tasks: list[Path]) -> dict[Path, int]:
    return {task: int((_read(task / "schedstat").split() or ["0"])[0]) for task in tasks}


def quiet(tasks: Tasks) -> Callable[[], bool]:
    def check() -> bool:
        before = _cpu_ns(tasks())
        time.sleep(WINDOW)
        after = _cpu_ns(tasks())
        used = sum(ns - before.get(task, 0) for task, ns in after.items())
        return before.keys() == after.keys() and used < SHARE * WINDOW * 1e9

    return check


def _runs_the_waiter(task: Path) -> bool:
    """A process's main thread, or a thread of ours named by own_thread(); not the helper
    threads of a runtime (gRPC's event engine sleeps in nanosleep as it starts)."""
    return task.parent.parent.name in (task.name, "self")


def pausing(tasks: Tasks) -> Callable[[], bool]:
    return lambda: any(
        "nanosleep" in _read(task / "wchan") for task in tasks() if _runs_the_waiter(task)
    )


def blocked_on_pipe(pid: int) -> bool:
    return _read(Path(f"/proc/{pid}/wchan")).endswith("pipe_read")


def until(ready: Callable[[], bool], what: str, alive: Callable[[], bool]) -> None:
    """Return once *ready*; raise if *what* ends first (a waiter that returns before the event
    would be timed as infinitely fast) or is not ready within BOUND."""
    deadline = time.monotonic() + BOUND
    while True:
        if not alive():
            raise RuntimeError(f"{what} ended before it was ready")
        if ready():
            if alive():
                return
            raise RuntimeError(f"{what} ended before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {BOUND}s")
        time.sleep(0.001)
