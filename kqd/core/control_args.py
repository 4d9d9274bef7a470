"""The argument rules of ``control(changelist, max_events, timeout)``, as in ``select.kqueue``.

Portable, so that every kqueue flavour (the core, the remote client) checks them identically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from kqd.core.kevent import kevent

# Timeouts longer than this (about 31 years, inf included) mean "wait forever": no clock
# would ever reach them, and the kernel's and gRPC's timers overflow long before.
FOREVER_SECONDS = 1e9


def _changes_of(changelist: Iterable[kevent] | None) -> list[kevent]:
    if changelist is None:
        return []
    try:
        changes = list(changelist)
    except TypeError:
        raise TypeError(
            f"changelist must be an iterable of kevent objects or None, "
            f"got {type(changelist).__name__}"
        ) from None
    for change in changes:
        if not isinstance(change, kevent):
            raise TypeError(
                f"changelist must contain kevent objects, got {type(change).__name__}; "
                "build changes with kevent(ident, filter, flags, fflags, data, udata)"
            )
    return changes


def _check_max_events(max_events: object) -> int:
    if isinstance(max_events, bool) or not isinstance(max_events, int):
        raise TypeError(f"max_events must be an int, got {type(max_events).__name__}")
    if max_events < 0:
        raise ValueError(f"Length of eventlist must be 0 or positive, got {max_events}")
    return max_events


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout argument must be a number or None, got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be positive or None, got {timeout}")
    return None if timeout > FOREVER_SECONDS else float(timeout)


def check_control_args(
    changelist: Iterable[kevent] | None, max_events: object, timeout: object
) -> tuple[list[kevent], int, float | None]:
    """The changes as a list, max_events, and the timeout in seconds (None: wait forever,
    also for timeouts beyond FOREVER_SECONDS)."""
    return _changes_of(changelist), _check_max_events(max_events), _check_timeout(timeout)
