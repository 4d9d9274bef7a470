"""The kevent record: one change in, or one event out, of a kqueue.

Portable on purpose (no OS-specific imports): the client library re-exports it.
Mirrors ``select.kevent``: six attributes, ident taken from ``fileno()`` where the object has
one, comparison field by field. Unlike ``select.kevent``, ``udata`` is opaque bytes that come
back unchanged instead of a pointer-sized integer.
"""

from __future__ import annotations

import functools
from typing import Any

from kqd.core.constants import (
    FILTER_NAMES,
    FLAG_NAMES,
    KQ_EV_ADD,
    KQ_FILTER_READ,
    NOTE_NAMES,
    describe_bits,
)

_FIELD_RANGES = {
    "ident": (0, 2**64 - 1, "a descriptor, pid, signal number or any id of 0..2**64-1"),
    "filter": (-(2**15), 2**15 - 1, "a KQ_FILTER_* value (a 16-bit signed integer)"),
    "flags": (0, 2**16 - 1, "KQ_EV_* flags (a 16-bit unsigned integer)"),
    "fflags": (0, 2**32 - 1, "KQ_NOTE_* flags (a 32-bit unsigned integer)"),
    "data": (-(2**63), 2**63 - 1, "a 64-bit signed integer"),
}


def _checked_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"kevent {field} must be an int, got {type(value).__name__}")
    low, high, what = _FIELD_RANGES[field]
    if not low <= value <= high:
        raise OverflowError(f"kevent {field} {value} is out of range: it must be {what}")
    return value


def _ident_of(ident: Any) -> int:
    if hasattr(ident, "fileno") and not isinstance(ident, int):
        ident = ident.fileno()
    return _checked_int("ident", ident)


def _udata_of(udata: Any) -> bytes:
    if isinstance(udata, bytes):
        return udata
    if isinstance(udata, (bytearray, memoryview)):
        return bytes(udata)
    raise TypeError(
        f"kevent udata must be bytes (opaque, returned unchanged), got {type(udata).__name__}; "
        "encode text or pack numbers with struct first"
    )


@functools.total_ordering
class kevent:  # noqa: N801 - the name select.kevent users know
    """One kevent: ``kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD, fflags=0, data=0,
    udata=b"")``.

    *ident* is an int or any object with ``fileno()``. Instances compare (and order) as the tuple
    ``(ident, filter, flags, fflags, data, udata)`` and are mutable, hence unhashable, like
    ``select.kevent``.
    """

    __slots__ = ("data", "fflags", "filter", "flags", "ident", "udata")
    __hash__ = None  # type: ignore[assignment]

    def __init__(
        self,
        ident: Any,
        filter: int = KQ_FILTER_READ,  # noqa: A002 - the kevent field's name
        flags: int = KQ_EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: bytes = b"",
    ) -> None:
        self.ident = _ident_of(ident)
        self.filter = _checked_int("filter", filter)
        self.flags = _checked_int("flags", flags)
        self.fflags = _checked_int("fflags", fflags)
        self.data = _checked_int("data", data)
        self.udata = _udata_of(udata)

    @classmethod
    def _trusted(
        cls,
        ident: int,
        filter: int,  # noqa: A002 - the kevent field's name
        flags: int,
        fflags: int,
        data: int,
        udata: bytes,
    ) -> kevent:
        """A kevent from fields known to be in range (events the core itself reports): the
        hot path skips the checks a user's change goes through."""
        ev = object.__new__(cls)
        ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, ev.udata = (
            ident,
            filter,
            flags,
            fflags,
            data,
            udata,
        )
        return ev

    def _key(self) -> tuple[int, int, int, int, int, bytes]:
        return (self.ident, self.filter, self.flags, self.fflags, self.data, self.udata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() < other._key()

    def __repr__(self) -> str:
        filter_name = FILTER_NAMES.get(self.filter, str(self.filter))
        fflags = describe_bits(self.fflags, NOTE_NAMES.get(self.filter, {}))
        return (
            f"kevent(ident={self.ident}, filter={filter_name}, "
            f"flags={describe_bits(self.flags, FLAG_NAMES)}, fflags={fflags}, "
            f"data={self.data}, udata={self.udata!r})"
        )
