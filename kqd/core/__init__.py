"""kqd core: kqueue(2) with FreeBSD's semantics, in process.

``kqueue()`` and ``kevent`` mirror Python's ``select.kqueue``/``select.kevent``; every
``KQ_*`` constant carries FreeBSD's value. The constants and ``kevent`` are portable; ``kqueue``
is the per-OS backend (today: Linux, on epoll, pidfd, inotify, timerfd and eventfd), loaded on
first use so that importing the constants never needs it.
"""

from __future__ import annotations

import sys
from typing import Any

from kqd.core import constants as _constants_module
from kqd.core.constants import *  # noqa: F403
from kqd.core.kevent import kevent

__all__ = ["kevent", "kqueue", *sorted(n for n in vars(_constants_module) if n.startswith("KQ_"))]  # noqa: F405 - kqueue comes from __getattr__


def __getattr__(name: str) -> Any:
    if name == "kqueue":
        if not sys.platform.startswith("linux"):
            raise ImportError(f"kqd.core has no kqueue backend for {sys.platform} yet")
        from kqd.core.linux import Kqueue

        globals()["kqueue"] = Kqueue
        return Kqueue
    raise AttributeError(f"module 'kqd.core' has no attribute {name!r}")
