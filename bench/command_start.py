"""A waiting command started after the fact: start -> exit with the pid already gone.

What a script pays for `kqctl pwait $pid` when the process has exited already, next to pidwait
and tail --pid, and the floor of any Python command line: a bare interpreter, and one that
imports kqclient. Timed from the start of the command (fork and exec included) to its exit.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from bench.peers import byte_compiled, kqctl, need_command
from bench.rounds import interleaved
from bench.session import Session
from bench.stats import Table
from bench.waiting import Arm, Armed, Command, Peer, Waiter


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def _started(argv: Callable[[], list[str]], expect: int) -> Arm:
    """Trials whose event is starting *argv()* (made anew for each trial)."""

    def arm() -> Armed:
        args = argv()
        started: list[Command] = []

        def close() -> None:
            if started:
                started[0].close()

        def notified() -> int:
            return started[0].exited()

        return Armed(lambda: started.append(Command(args, expect)), Waiter(notified, close))

    return arm


def kqctl_pwait(session: Session) -> Arm:
    base = [*kqctl(session.target), "pwait"]
    return _started(lambda: [*base, str(dead_pid())], expect=1)


def pidwait(session: Session) -> Arm:
    exe = need_command("pidwait")
    pidfile = session.scratch / "gone.pid"

    def argv() -> list[str]:
        pidfile.write_text(f"{dead_pid()}\n")
        return [exe, "--pidfile", str(pidfile)]

    return _started(argv, expect=1)


def tail_pid(session: Session) -> Arm:
    exe = need_command("tail")
    return _started(lambda: [exe, f"--pid={dead_pid()}", "-f", "/dev/null"], expect=0)


def python(*code: str) -> Callable[[Session], Arm]:
    def make(session: Session) -> Arm:
        byte_compiled()  # `import kqclient` as installed, like kqctl (see byte_compiled)
        return _started(lambda: [sys.executable, *code], expect=0)

    return make


KQCTL = "kqctl pwait, pid gone (command)"
PIDWAIT = "pidwait, pid gone (command)"
TAIL = "tail --pid, pid gone (command)"
PYTHON = "python -c pass"
IMPORT = 'python -c "import kqclient"'

PEERS = [
    Peer(KQCTL, kqctl_pwait),
    Peer(PIDWAIT, pidwait),
    Peer(TAIL, tail_pid),
    Peer(PYTHON, python("-c", "pass")),
    Peer(IMPORT, python("-c", "import kqclient")),
]


def measure(session: Session) -> list[Table]:
    title = "Waiting command started after the exit: start -> exit"
    return [interleaved("start", title, PEERS, session, phase=0.0)]
