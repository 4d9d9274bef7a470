"""Idle cost: the daemon's CPU with 10,000 registrations and nothing happening (nothing polls),
next to tools that poll at their default intervals, over the same window."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import kqclient

from bench import registrations
from bench.daemon import running_daemon
from bench.peers import Skip, need_command
from bench.procstat import cpu_seconds
from bench.session import Session

# 10,000 registrations of every kind.
USER, TIMER, VNODE, PROC = 8000, 1000, 500, 500


def _register_mix(kq: kqclient.RemoteKqueue, session: Session, watched: list) -> None:
    registrations.batched(kq, registrations.user(USER))
    registrations.batched(kq, registrations.timer(TIMER))
    registrations.batched(kq, registrations.vnode(kq, session.scratch / "idle", VNODE))
    registrations.batched(kq, registrations.proc(watched))


def _pollers(session: Session, watched_pid: int) -> list[tuple[str, subprocess.Popen]]:
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    session.cleanups.append(refused.close)
    port = refused.getsockname()[1]
    retry = (
        f"import socket, time\nwhile True:\n    s = socket.socket()\n"
        f"    if s.connect_ex(('127.0.0.1', {port})) == 0: break\n"
        f"    s.close(); time.sleep(0.1)\n"
    )
    commands = [
        ("tail --pid (polls every 1 s)", ["tail", f"--pid={watched_pid}", "-f", "/dev/null"]),
        (
            "kill -0 loop every 0.1 s",
            ["sh", "-c", f"while kill -0 {watched_pid}; do sleep 0.1; done"],
        ),
        ("connect-retry loop every 0.1 s (Python)", [sys.executable, "-c", retry]),
    ]
    with contextlib.suppress(Skip):
        commands.append(
            (
                "wait-for-it (retries every 1 s)",
                [need_command("wait-for-it"), "-q", "-t", "0", f"127.0.0.1:{port}"],
            )
        )
    started = []
    for name, argv in commands:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        session.cleanups.append(proc.kill)
        started.append((name, proc))
    return started


def measure(session: Session) -> list[tuple[str, float]]:
    """(who, % of one core) over the window."""
    window = 5.0 if session.quick else 30.0
    sleepers = registrations.sleepers(PROC)
    for proc in sleepers:
        session.cleanups.append(proc.kill)
    with running_daemon() as daemon, kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        _register_mix(kq, session, sleepers)
        pollers = _pollers(session, sleepers[0].pid)
        time.sleep(1.0)  # let start-up work finish before the window opens
        pids = [("kqd serve, 10,000 registrations", daemon.pid)]
        pids += [(name, proc.pid) for name, proc in pollers]
        before = {pid: cpu_seconds(pid) for _, pid in pids}
        time.sleep(window)
        return [(name, 100 * (cpu_seconds(pid) - before[pid]) / window) for name, pid in pids]
