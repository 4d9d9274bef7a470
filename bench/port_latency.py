"""Port becomes connectable -> notified: kqctl wait-port next to wait-for-it and a retry loop.

No kernel event says "someone started listening", so every tool retries; the benchmark binds a
port, starts the waiter, and times from listen() to the waiter knowing.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable

from bench.peers import need_command
from bench.session import Session
from bench.waiting import BOUND, Peer, settle, timed, timed_command

RETRY_INTERVAL = 0.1  # a typical connect-retry loop

Trial = Callable[[], int]


def _bound() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    return server


def _command(argv: Callable[[str], list[str]]) -> Trial:
    def trial() -> int:
        with _bound() as server:
            address = f"127.0.0.1:{server.getsockname()[1]}"
            return timed_command(argv(address), server.listen)

    return trial


def kqctl_wait_port(session: Session) -> Trial:
    base = [sys.executable, "-m", "kqclient.kqctl", "--target", session.target, "wait-port"]
    return _command(lambda address: [*base, "-t", str(BOUND), address])


def wait_for_it(session: Session) -> Trial:
    exe = need_command("wait-for-it")
    return _command(lambda address: [exe, "-q", "-t", str(int(BOUND)), address])


def retry_loop(session: Session) -> Trial:
    def trial() -> int:
        with _bound() as server:
            address = server.getsockname()
            done = threading.Event()

            def loop() -> None:
                while True:
                    with socket.socket() as probe:
                        if probe.connect_ex(address) == 0:
                            done.set()
                            return
                    time.sleep(RETRY_INTERVAL)

            threading.Thread(target=loop, daemon=True).start()
            settle()
            return timed(server.listen, lambda: done.wait(BOUND))

    return trial


KQCTL = "kqctl wait-port (command)"
WAIT_FOR_IT = "wait-for-it (command)"

PEERS = [
    Peer(KQCTL, kqctl_wait_port, slow=True),
    Peer(f"connect-retry loop every {RETRY_INTERVAL}s, in process", retry_loop, slow=True),
    Peer(WAIT_FOR_IT, wait_for_it, slow=True),
]
