"""Process exit -> notified: kqd (core, remote stream, kqctl pwait) and the tools users know.

The process to wait for is blocked reading its stdin when the waiter starts; the event is one byte
written to it. Commands are timed to their own exit.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable

from bench import waiting
from bench.peers import kqctl, need_command, need_module
from bench.rounds import interleaved
from bench.session import Session
from bench.stats import Table
from bench.waiting import BOUND, Arm, Armed, Peer, Waiter, command, in_thread
from kqd.core import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent

KILL0_INTERVAL = 0.1  # a typical `while kill -0 $pid; do sleep 0.1; done`
PHASE = 1.0  # the longest polling period here: tail --pid looks once a second


def _exit_of(waiter_for: Callable[[int], Waiter]) -> Arm:
    """Trials of a waiter that *waiter_for(pid)* starts for a ready process."""

    def arm() -> Armed:
        child = waiting.exit_child()
        try:
            waiter = waiter_for(child.pid)
        except BaseException:
            waiting.reap(child)
            raise
        return Armed(lambda: waiting.release(child), waiter, lambda: waiting.reap(child))

    return arm


def floor(session: Session) -> Arm:
    def waiter(pid: int) -> Waiter:
        pidfd = os.pidfd_open(pid)
        ep = select.epoll()
        ep.register(pidfd, select.EPOLLIN)
        waiter = in_thread(lambda: ep.poll(BOUND))

        def close() -> None:
            ep.close()
            os.close(pidfd)

        return Waiter(waiter.notified, close, waiter.waiting)

    return _exit_of(waiter)


def _exit_note(pid: int) -> list[kevent]:
    return [kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)]


def core(session: Session) -> Arm:
    def waiter(pid: int) -> Waiter:
        session.core.control(_exit_note(pid), 0)
        return in_thread(lambda: session.core.control(None, 1, BOUND))

    return _exit_of(waiter)


def remote_stream(session: Session) -> Arm:
    def waiter(pid: int) -> Waiter:
        session.stream.kq.control(_exit_note(pid), 0)
        return in_thread(lambda: session.stream.next_event() is not None)

    return _exit_of(waiter)


def kqctl_pwait(session: Session) -> Arm:
    # Quiet includes the daemon: kqctl waits quietly for its registration's answer too.
    argv = [*kqctl(session.target), "pwait"]
    return _exit_of(lambda pid: command([*argv, str(pid)], also=(session.daemon_pid,)))


def pidwait(session: Session) -> Arm:
    exe = need_command("pidwait")
    pidfile = session.scratch / "pidwait.pid"

    def waiter(pid: int) -> Waiter:
        pidfile.write_text(f"{pid}\n")
        return command([exe, "--pidfile", str(pidfile)])

    return _exit_of(waiter)


def tail_pid(session: Session) -> Arm:
    exe = need_command("tail")
    return _exit_of(lambda pid: command([exe, f"--pid={pid}", "-f", "/dev/null"]))


def kill0_loop(session: Session) -> Arm:
    script = f"while kill -0 $0 2>/dev/null; do sleep {KILL0_INTERVAL}; done"
    return _exit_of(lambda pid: command(["sh", "-c", script, str(pid)]))


def psutil_wait(session: Session) -> Arm:
    need_module("psutil")
    import psutil

    def waiter(pid: int) -> Waiter:
        proc = psutil.Process(pid)
        return in_thread(lambda: not psutil.wait_procs([proc], timeout=BOUND)[1])

    return _exit_of(waiter)


FLOOR = "in-process pidfd + epoll (floor)"
CORE = "kqd core, in process"
STREAM = "kqd client stream (Unix socket)"
KQCTL = "kqctl pwait (command)"
PIDWAIT = "pidwait (procps, command)"
TAIL = "tail --pid (command)"

PEERS = [
    Peer(FLOOR, floor),
    Peer(CORE, core),
    Peer(STREAM, remote_stream),
    Peer(KQCTL, kqctl_pwait),
    Peer(PIDWAIT, pidwait),
    Peer("psutil.wait_procs, in process", psutil_wait),
    Peer(f"kill -0 loop every {KILL0_INTERVAL}s (command)", kill0_loop),
    Peer(TAIL, tail_pid),
]


def measure(session: Session) -> list[Table]:
    return [interleaved("exit", "Process exit -> notified", PEERS, session, PHASE)]
