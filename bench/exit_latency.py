"""Process exit -> notified: kqd (core, remote stream, kqctl pwait) and the tools users know."""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable

from bench.peers import need_command, need_module
from bench.session import Session
from bench.waiting import Peer, exit_child, release, timed, timed_command
from kqd.core import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent

KILL0_INTERVAL = 0.1  # a typical `while kill -0 $pid; do sleep 0.1; done`


def _in_process(prepare: Callable[[int], Callable[[], object]]) -> Callable[[Session], int]:
    """A trial for a waiter in this process: prepare(pid) registers and returns the wait."""

    def trial(session: Session) -> int:
        child = exit_child()
        wait = prepare(child.pid)
        took = timed(lambda: release(child), wait)
        child.wait()
        return took

    return trial


def _command(argv: Callable[[Session, int], list[str]]) -> Callable[[Session], int]:
    def trial(session: Session) -> int:
        child = exit_child()
        took = timed_command(argv(session, child.pid), lambda: release(child))
        child.wait()
        return took

    return trial


def floor(session: Session) -> Callable[[], int]:
    def prepare(pid: int) -> Callable[[], object]:
        pidfd = os.pidfd_open(pid)
        ep = select.epoll()
        ep.register(pidfd, select.EPOLLIN)

        def wait() -> None:
            ep.poll(30)
            ep.close()
            os.close(pidfd)

        return wait

    return lambda: _in_process(prepare)(session)


def core(session: Session) -> Callable[[], int]:
    def prepare(pid: int) -> Callable[[], object]:
        session.core.control([kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
        return lambda: session.core.control(None, 1, 30)

    return lambda: _in_process(prepare)(session)


def remote_stream(session: Session) -> Callable[[], int]:
    def prepare(pid: int) -> Callable[[], object]:
        session.stream.kq.control([kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
        return session.stream.next_event

    return lambda: _in_process(prepare)(session)


def kqctl_pwait(session: Session) -> Callable[[], int]:
    argv = [sys.executable, "-m", "kqclient.kqctl", "--target", session.target, "pwait"]
    return lambda: _command(lambda s, pid: [*argv, str(pid)])(session)


def pidwait(session: Session) -> Callable[[], int]:
    exe = need_command("pidwait")
    pidfile = session.scratch / "pidwait.pid"

    def argv(s: Session, pid: int) -> list[str]:
        pidfile.write_text(f"{pid}\n")
        return [exe, "--pidfile", str(pidfile)]

    return lambda: _command(argv)(session)


def tail_pid(session: Session) -> Callable[[], int]:
    exe = need_command("tail")
    return lambda: _command(lambda s, pid: [exe, f"--pid={pid}", "-f", "/dev/null"])(session)


def kill0_loop(session: Session) -> Callable[[], int]:
    script = f"while kill -0 $0 2>/dev/null; do sleep {KILL0_INTERVAL}; done"
    return lambda: _command(lambda s, pid: ["sh", "-c", script, str(pid)])(session)


def psutil_wait(session: Session) -> Callable[[], int]:
    need_module("psutil")
    import psutil

    def prepare(pid: int) -> Callable[[], object]:
        proc = psutil.Process(pid)
        done = threading.Event()

        def waiter() -> None:
            psutil.wait_procs([proc], timeout=30)
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return lambda: done.wait(30)

    return lambda: _in_process(prepare)(session)


FLOOR = "in-process pidfd + epoll (floor)"
STREAM = "kqd client stream (Unix socket)"
KQCTL = "kqctl pwait (command)"
PIDWAIT = "pidwait (procps, command)"
TAIL = "tail --pid (command)"

PEERS = [
    Peer(FLOOR, floor),
    Peer("kqd core, in process", core),
    Peer(STREAM, remote_stream),
    Peer(KQCTL, kqctl_pwait, slow=True),
    Peer(PIDWAIT, pidwait, slow=True),
    Peer("psutil.wait_procs, in process", psutil_wait),
    Peer(f"kill -0 loop every {KILL0_INTERVAL}s (command)", kill0_loop, slow=True),
    Peer(TAIL, tail_pid, slow=True),
]
