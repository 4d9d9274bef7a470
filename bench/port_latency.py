"""Port becomes connectable -> notified: kqctl wait-port next to wait-for-it and a retry loop.

No kernel event says "someone started listening", so every tool retries (kqctl's daemon does it
for kqctl). A trial binds a port (connecting to it is refused), starts the waiter, lets it fail
once and pause before its next try (kqctl: until it is quiet in its one call; bench/ready.py),
and times from listen() to the waiter knowing.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from bench import ready
from bench.peers import kqctl, need_command
from bench.rounds import interleaved
from bench.session import Session
from bench.stats import Table
from bench.waiting import BOUND, Arm, Armed, Peer, Waiter, command, in_thread

RETRY_INTERVAL = 0.1  # a typical connect-retry loop
PHASE = 1.0  # the longest polling period here: wait-for-it tries once a second


def _listen_on(waiter_for: Callable[[tuple[str, int]], Waiter]) -> Arm:
    def arm() -> Armed:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        try:
            waiter = waiter_for(server.getsockname())
        except BaseException:
            server.close()
            raise
        return Armed(server.listen, waiter, server.close)

    return arm


def _waiting_command(
    argv: Callable[[str], list[str]], readiness: ready.Readiness = ready.pausing
) -> Arm:
    return _listen_on(lambda a: command(argv(f"{a[0]}:{a[1]}"), readiness=readiness))


def kqctl_wait_port(session: Session) -> Arm:
    """kqctl's one call waits while the daemon retries: ready once kqctl is quiet."""
    base = [*kqctl(session.target), "wait-port", "-t", str(BOUND)]
    return _waiting_command(lambda address: [*base, address], ready.quiet)


def wait_for_it(session: Session) -> Arm:
    exe = need_command("wait-for-it")
    return _waiting_command(lambda address: [exe, "-q", "-t", str(int(BOUND)), address])


def retry_loop(session: Session) -> Arm:
    def waiter(address: tuple[str, int]) -> Waiter:
        def loop() -> bool:
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:
                with socket.socket() as probe:
                    if probe.connect_ex(address) == 0:
                        return True
                time.sleep(RETRY_INTERVAL)
            return False

        return in_thread(loop, readiness=ready.pausing)

    return _listen_on(waiter)


KQCTL = "kqctl wait-port (command)"
WAIT_FOR_IT = "wait-for-it (command)"

PEERS = [
    Peer(KQCTL, kqctl_wait_port),
    Peer(f"connect-retry loop every {RETRY_INTERVAL}s, in process", retry_loop),
    Peer(WAIT_FOR_IT, wait_for_it),
]


def measure(session: Session) -> list[Table]:
    return [interleaved("port", "Port connectable -> notified", PEERS, session, PHASE)]
