"""A remote queue's descriptor table: the numbers its client knows, and the daemon's descriptors
behind them.

A client names descriptors by the numbers Open, OpenPeerFd and OpenConnection returned; its
knotes use them as idents. The daemon's own descriptor numbers are an accident of the moment:
after a restart the same objects come back under other numbers (or not at all). So the table
maps the client's numbers to the daemon's (a new descriptor keeps its own number when it is
free, so the map is mostly the identity), and an entry whose object could not be brought back
after a restart stays *dead* (no descriptor) until the client closes it: its knotes reported
EV_EOF, new knotes on it fail with EBADF.

Each entry keeps how it was opened (``kind``: "path", "peer" or "connection") and the identity
of its object (``spec``), which the state store writes down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FIRST_NUMBER = 3  # below: stdin, stdout, stderr, numbers a client never gets


@dataclass
class Entry:
    real: int | None  # the daemon's descriptor; None: dead
    kind: str
    spec: dict[str, Any] = field(default_factory=dict)


class DescriptorTable:
    def __init__(self) -> None:
        self.entries: dict[int, Entry] = {}
        self._numbers: dict[int, int] = {}  # real -> the client's number

    def __contains__(self, number: int) -> bool:
        return number in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def add(
        self, real: int | None, kind: str, spec: dict[str, Any], number: int | None = None
    ) -> int:
        """Enter *real* (None: a dead entry) under *number*, or under a free number (*real*
        itself when free); the client's number."""
        if number is None:
            number = real if real is not None and real not in self.entries else self._free()
        self.entries[number] = Entry(real, kind, spec)
        if real is not None:
            self._numbers[real] = number
        return number

    def remove(self, number: int) -> Entry:
        entry = self.entries.pop(number)
        if entry.real is not None:
            self._numbers.pop(entry.real, None)
        return entry

    def real(self, number: int) -> int | None:
        """The daemon's descriptor behind *number*; None when dead or not in the table."""
        entry = self.entries.get(number)
        return None if entry is None else entry.real

    def number(self, real: int) -> int:
        """The client's number for the daemon's descriptor *real*."""
        return self._numbers.get(real, real)

    def live(self) -> list[int]:
        """The daemon's descriptors the table holds."""
        return list(self._numbers)

    def _free(self) -> int:
        number = FIRST_NUMBER
        while number in self.entries:
            number += 1
        return number
