"""A process-wide descriptor watched from every kqueue that needs it (inotify, proc connector).

It sits in the epoll of each kqueue with at least one subscription; whichever kqueue sees it
readable calls ``pump()``, which reads everything and posts each subscriber's share to that
subscriber's kqueue (waking it if it is another one). No thread of its own is needed.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kqd.core.linux.kqueue import Kqueue


class SharedDescriptor:
    """Registers one descriptor in many kqueues' epolls, counting each kqueue's subscriptions."""

    def __init__(self, fd: int, pump: Callable[[], None]) -> None:
        self.fd = fd
        self._pump = pump
        self._lock = threading.Lock()
        self._users: dict[int, int] = {}  # id(kqueue) -> subscriptions

    def on_ready(self, events: int) -> None:
        self._pump()

    def on_stale(self) -> None:
        pass

    def join(self, kq: Kqueue) -> None:
        with self._lock:
            count = self._users.get(id(kq), 0)
            self._users[id(kq)] = count + 1
        if count == 0:
            kq.add_source(self.fd, select.EPOLLIN, self)

    def leave(self, kq: Kqueue) -> None:
        with self._lock:
            count = self._users.get(id(kq), 0) - 1
            if count > 0:
                self._users[id(kq)] = count
            else:
                self._users.pop(id(kq), None)
        if count == 0:
            kq.remove_source(self.fd)
