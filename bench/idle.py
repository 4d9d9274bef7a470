"""Idle cost: the daemon's CPU with 10,000 registrations and nothing happening (nothing polls),
next to tools that poll at their default intervals, over the same window; and what waiting on a
refused port costs: kqctl wait-port (kqctl, and the session's daemon that connects for it: both
count) next to wait-for-it and a retry loop."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time

import kqclient

from bench import registrations
from bench.daemon import running_daemon
from bench.peers import Skip, kqctl, need_command
from bench.procstat import cpu_seconds
from bench.session import Session
from bench.stats import Cell, Table

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
        (WAIT_PORT, [*kqctl(session.target), "wait-port", f"127.0.0.1:{port}"]),
    ]
    with contextlib.suppress(Skip):
        commands.append(
            (
                "wait-for-it (retries every 1 s)",
                [need_command("wait-for-it"), "-q", "-t", "0", f"127.0.0.1:{port}"],
            )
        )
    return [
        (name, subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, argv in commands
    ]


DAEMON = "kqd serve, 10,000 registrations"
WAIT_PORT = "kqctl wait-port, refused port: kqctl"
WAIT_PORT_DAEMON = "kqctl wait-port, refused port: its kqd serve"
WAIT_FOR_IT = "wait-for-it (retries every 1 s)"


def measure(session: Session) -> list[Table]:
    """% of one core over the window, per process."""
    window = 5.0 if session.quick else 30.0
    sleepers = registrations.sleepers(PROC)
    pollers: list[tuple[str, subprocess.Popen]] = []
    try:
        with running_daemon() as daemon, kqclient.connect(daemon.target) as client:
            _register_mix(client.kqueue(), session, sleepers)
            pollers = _pollers(session, sleepers[0].pid)
            time.sleep(1.0)  # let start-up work finish before the window opens
            pids = [(DAEMON, daemon.pid), *((name, p.pid) for name, p in pollers)]
            pids.append((WAIT_PORT_DAEMON, session.daemon_pid))
            before = {pid: cpu_seconds(pid) for _, pid in pids}
            time.sleep(window)
            rows: dict[str, list[Cell] | str] = {
                name: [100 * (cpu_seconds(pid) - before[pid]) / window] for name, pid in pids
            }
    finally:
        for _, proc in [*pollers, *(("", p) for p in sleepers)]:
            proc.kill()
            proc.wait()
    return [Table("idle", "Idle CPU (% of one core)", ["process", "CPU %"], rows)]
