"""How every contestant is timed: arm, stay idle, make the event happen, time until it is known.

One trial of any contestant goes through ``time_one``:

1. *arm*: the target is made ready (a process to wait for is blocked on its pipe) and the waiter
   started and seen waiting (bench/ready.py); nothing of this is timed;
2. *idle*: the same pause for every contestant of a round (bench/rounds.py draws it), so every
   waiter, in process or not, is woken from the same cold idle, and a polling waiter sees the
   event at a random point of its period;
3. *fire*: the clock starts and the event is made to happen;
4. *notified*: the moment the waiter knows. An in-process waiter waits in a thread of its own
   (blocked when the event comes, as a command is) and that thread takes the time as its wait
   returns; a command is timed to its own exit, seen through a pidfd, as a shell would see it.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench import ready

if TYPE_CHECKING:
    from bench.session import Session

IDLE = 0.05  # the shortest idle before an event (seconds); rounds add a random phase to it
BOUND = 30.0  # no waiter may take longer


def _nothing() -> None:
    pass


def _yes() -> bool:
    return True


@dataclass
class Waiter:
    notified: Callable[[], int]  # blocks until the waiter knows; that moment (perf_counter_ns)
    close: Callable[[], None] = _nothing
    waiting: Callable[[], bool] = _yes  # False once it has returned


@dataclass
class Armed:
    fire: Callable[[], None]  # makes the event happen
    waiter: Waiter
    close: Callable[[], None] = _nothing  # the target's clean-up


Arm = Callable[[], Armed]


@dataclass
class Peer:
    """A contestant: *make(session)* prepares it once per run (or raises Skip) and returns the
    function that arms one trial."""

    name: str
    make: Callable[[Session], Arm]


def time_one(arm: Arm, idle: float) -> int:
    """One trial (ns from the event to the waiter knowing), after *idle* seconds armed."""
    armed = arm()
    try:
        time.sleep(idle)
        if not armed.waiter.waiting():
            raise RuntimeError("the waiter returned before the event")
        start = time.perf_counter_ns()
        armed.fire()
        return armed.waiter.notified() - start
    finally:
        armed.waiter.close()
        armed.close()


def in_thread(wait: Callable[[], object], readiness: ready.Readiness = ready.quiet) -> Waiter:
    """Run *wait* (truthy when notified, falsy on timeout) in a new thread; return once that
    thread is waiting."""
    tid: list[int] = []
    outcome: list[int | BaseException] = []
    started = threading.Event()

    def body() -> None:
        tid.append(threading.get_native_id())
        started.set()
        try:
            notified = wait()
            outcome.append(time.perf_counter_ns() if notified else TimeoutError("no event"))
        except BaseException as exc:  # handed to the timing thread
            outcome.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    started.wait()
    ready.until(readiness(lambda: ready.own_thread(tid[0])), "the waiting thread", thread.is_alive)

    def notified() -> int:
        thread.join(BOUND)
        if not outcome:
            raise TimeoutError(f"no event within {BOUND}s")
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    return Waiter(notified, waiting=thread.is_alive)


class Command:
    """A command started now, timed to its exit (a pidfd); its exit status must be *expect*."""

    def __init__(self, argv: list[str], expect: int = 0) -> None:
        self.argv, self.expect = argv, expect
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.exit = select.epoll()
        self.exit.register(self.pidfd, select.EPOLLIN)

    def exited(self) -> int:
        if not self.exit.poll(BOUND):
            raise TimeoutError(f"{self.argv[0]} did not exit within {BOUND}s")
        at = time.perf_counter_ns()
        assert self.proc.stderr is not None
        if self.proc.wait() != self.expect:
            raise RuntimeError(
                f"{' '.join(self.argv)} exited with {self.proc.returncode}, not {self.expect}: "
                f"{self.proc.stderr.read().decode(errors='replace').strip()}"
            )
        return at

    def running(self) -> bool:
        return not self.exit.poll(0)

    def close(self) -> None:
        self.exit.close()
        os.close(self.pidfd)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def command(
    argv: list[str], readiness: ready.Readiness = ready.quiet, also: tuple[int, ...] = ()
) -> Waiter:
    """Start the waiting command *argv*; return once it (and *also*, e.g. the daemon it
    registers with) is ready."""
    started = Command(argv)
    try:
        ready.until(
            readiness(lambda: ready.process_tasks(started.proc.pid, *also)),
            argv[0],
            lambda: started.proc.poll() is None,
        )
    except BaseException:
        started.close()
        raise
    return Waiter(started.exited, started.close, started.running)


def exit_child() -> subprocess.Popen:
    """A process that exits as soon as one byte arrives on its stdin, returned once it is blocked
    reading it, and reaped at once when it exits (as a supervisor would: tools that poll with
    kill(pid, 0) see a zombie as alive)."""
    child = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    ready.until(
        lambda: ready.blocked_on_pipe(child.pid),
        "the process to wait for",
        lambda: child.poll() is None,
    )
    threading.Thread(target=child.wait, daemon=True).start()
    return child


def release(child: subprocess.Popen) -> None:
    """Let an exit_child() exit."""
    assert child.stdin is not None
    child.stdin.write(b"x")
    child.stdin.flush()


def reap(child: subprocess.Popen) -> None:
    """Clean up after an exit_child() (released or not)."""
    assert child.stdin is not None
    child.stdin.close()  # lets it exit if it was never released
    child.wait()
