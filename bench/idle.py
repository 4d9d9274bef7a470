"""Idle cost: the daemon's CPU with 10,000 registrations and nothing happening (nothing polls),
next to tools that poll at their default intervals, over the same window."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import kqclient

from bench.daemon import running_daemon
from bench.peers import Skip, need_command
from bench.procstat import cpu_seconds
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

REGISTRATIONS = {"USER": 8000, "TIMER (1 h)": 1000, "VNODE": 500, "PROC": 500}


def _register_mix(kq: kqclient.RemoteKqueue, session: Session, sleepers: list) -> None:
    kq.control([kevent(i, KQ_FILTER_USER, KQ_EV_ADD | KQ_EV_CLEAR) for i in range(8000)], 0)
    kq.control(
        [kevent(i, KQ_FILTER_TIMER, KQ_EV_ADD, KQ_NOTE_SECONDS, 3600) for i in range(1000)], 0
    )
    files = session.scratch / "idle"
    files.mkdir()
    vnodes = []
    for i in range(500):
        path = files / f"f{i}"
        path.write_bytes(b"")
        vnodes.append(
            kevent(kq.open(str(path)), KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)
        )
    kq.control(vnodes, 0)
    kq.control([kevent(p.pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for p in sleepers], 0)


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
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(REGISTRATIONS["PROC"])]
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
