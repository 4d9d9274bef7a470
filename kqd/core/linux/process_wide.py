"""One instance per process of the things every kqueue shares (inotify, proc connector, signals)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar, Self


class ProcessWide:
    """``shared()`` makes the instance on first use; later calls return it."""

    _instances: ClassVar[dict[type, Any]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls) -> Self:
        with ProcessWide._instances_lock:
            instance = ProcessWide._instances.get(cls)
            if instance is None:
                instance = ProcessWide._instances[cls] = cls()
            return instance

    @classmethod
    def existing(cls) -> Self | None:
        """The instance if one was made; never makes one (for monitoring: making one would
        open a descriptor just to say nothing happened)."""
        instance: Self | None = ProcessWide._instances.get(cls)
        return instance
