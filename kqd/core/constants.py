"""kqueue constants with FreeBSD's values.

Portable on purpose: this module imports nothing OS-specific, so the client library can
re-export it on any platform. Names follow Python's ``select`` module (``KQ_FILTER_*``,
``KQ_EV_*``, ``KQ_NOTE_*``); values follow FreeBSD's ``sys/event.h``.
"""

from __future__ import annotations

# Filters (kevent.filter).
KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_FILTER_VNODE = -4
KQ_FILTER_PROC = -5
KQ_FILTER_SIGNAL = -6
KQ_FILTER_TIMER = -7
KQ_FILTER_USER = -11

# Flags (kevent.flags).
KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_RECEIPT = 0x0040
KQ_EV_DISPATCH = 0x0080
KQ_EV_FORCEONESHOT = 0x0100  # make an existing knote ONESHOT and active (FreeBSD 12+)
KQ_EV_KEEPUDATA = 0x0200  # modify an existing knote but keep its udata (FreeBSD 12+)
KQ_EV_SYSFLAGS = 0xF000  # reserved for the system: stripped from changes
KQ_EV_ERROR = 0x4000
KQ_EV_EOF = 0x8000

# READ/WRITE.
KQ_NOTE_LOWAT = 0x0001

# VNODE.
KQ_NOTE_DELETE = 0x0001
KQ_NOTE_WRITE = 0x0002
KQ_NOTE_EXTEND = 0x0004
KQ_NOTE_ATTRIB = 0x0008
KQ_NOTE_LINK = 0x0010
KQ_NOTE_RENAME = 0x0020
KQ_NOTE_REVOKE = 0x0040
KQ_NOTE_OPEN = 0x0080
KQ_NOTE_CLOSE = 0x0100
KQ_NOTE_CLOSE_WRITE = 0x0200
KQ_NOTE_READ = 0x0400

# PROC.
KQ_NOTE_EXIT = 0x80000000
KQ_NOTE_FORK = 0x40000000
KQ_NOTE_EXEC = 0x20000000
KQ_NOTE_PCTRLMASK = 0xF0000000
KQ_NOTE_PDATAMASK = 0x000FFFFF
KQ_NOTE_TRACK = 0x00000001
KQ_NOTE_TRACKERR = 0x00000002
KQ_NOTE_CHILD = 0x00000004

# TIMER.
KQ_NOTE_SECONDS = 0x0001
KQ_NOTE_MSECONDS = 0x0002
KQ_NOTE_USECONDS = 0x0004
KQ_NOTE_NSECONDS = 0x0008
KQ_NOTE_ABSTIME = 0x0010

# USER.
KQ_NOTE_FFNOP = 0x00000000
KQ_NOTE_FFAND = 0x40000000
KQ_NOTE_FFOR = 0x80000000
KQ_NOTE_FFCOPY = 0xC0000000
KQ_NOTE_FFCTRLMASK = 0xC0000000
KQ_NOTE_FFLAGSMASK = 0x00FFFFFF
KQ_NOTE_TRIGGER = 0x01000000

FILTER_NAMES: dict[int, str] = {
    value: name for name, value in globals().items() if name.startswith("KQ_FILTER_")
}

FLAG_NAMES: dict[int, str] = {
    KQ_EV_ADD: "KQ_EV_ADD",
    KQ_EV_DELETE: "KQ_EV_DELETE",
    KQ_EV_ENABLE: "KQ_EV_ENABLE",
    KQ_EV_DISABLE: "KQ_EV_DISABLE",
    KQ_EV_ONESHOT: "KQ_EV_ONESHOT",
    KQ_EV_CLEAR: "KQ_EV_CLEAR",
    KQ_EV_RECEIPT: "KQ_EV_RECEIPT",
    KQ_EV_DISPATCH: "KQ_EV_DISPATCH",
    KQ_EV_FORCEONESHOT: "KQ_EV_FORCEONESHOT",
    KQ_EV_KEEPUDATA: "KQ_EV_KEEPUDATA",
    KQ_EV_ERROR: "KQ_EV_ERROR",
    KQ_EV_EOF: "KQ_EV_EOF",
}

# The note names that make sense for each filter, for readable reprs and command lines.
NOTE_NAMES: dict[int, dict[int, str]] = {
    KQ_FILTER_READ: {KQ_NOTE_LOWAT: "KQ_NOTE_LOWAT"},
    KQ_FILTER_WRITE: {KQ_NOTE_LOWAT: "KQ_NOTE_LOWAT"},
    KQ_FILTER_VNODE: {
        KQ_NOTE_DELETE: "KQ_NOTE_DELETE",
        KQ_NOTE_WRITE: "KQ_NOTE_WRITE",
        KQ_NOTE_EXTEND: "KQ_NOTE_EXTEND",
        KQ_NOTE_ATTRIB: "KQ_NOTE_ATTRIB",
        KQ_NOTE_LINK: "KQ_NOTE_LINK",
        KQ_NOTE_RENAME: "KQ_NOTE_RENAME",
        KQ_NOTE_REVOKE: "KQ_NOTE_REVOKE",
        KQ_NOTE_OPEN: "KQ_NOTE_OPEN",
        KQ_NOTE_CLOSE: "KQ_NOTE_CLOSE",
        KQ_NOTE_CLOSE_WRITE: "KQ_NOTE_CLOSE_WRITE",
        KQ_NOTE_READ: "KQ_NOTE_READ",
    },
    KQ_FILTER_PROC: {
        KQ_NOTE_EXIT: "KQ_NOTE_EXIT",
        KQ_NOTE_FORK: "KQ_NOTE_FORK",
        KQ_NOTE_EXEC: "KQ_NOTE_EXEC",
        KQ_NOTE_TRACK: "KQ_NOTE_TRACK",
        KQ_NOTE_TRACKERR: "KQ_NOTE_TRACKERR",
        KQ_NOTE_CHILD: "KQ_NOTE_CHILD",
    },
    KQ_FILTER_TIMER: {
        KQ_NOTE_SECONDS: "KQ_NOTE_SECONDS",
        KQ_NOTE_MSECONDS: "KQ_NOTE_MSECONDS",
        KQ_NOTE_USECONDS: "KQ_NOTE_USECONDS",
        KQ_NOTE_NSECONDS: "KQ_NOTE_NSECONDS",
        KQ_NOTE_ABSTIME: "KQ_NOTE_ABSTIME",
    },
    KQ_FILTER_USER: {KQ_NOTE_TRIGGER: "KQ_NOTE_TRIGGER"},
}


def describe_bits(value: int, names: dict[int, str]) -> str:
    """``A|B|0x40`` for the bits of *value*, named where *names* knows them; ``0`` when none."""
    parts = []
    rest = value
    for bit, name in names.items():
        if bit and value & bit == bit:
            parts.append(name)
            rest &= ~bit
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"
