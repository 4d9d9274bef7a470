"""kqd's state on disk, so a restart (a rollout, an OOM kill, ``kill -9``) is a pause, not a loss.

One SQLite database in WAL mode (the standard library's sqlite3), written only from the event
loop. What it keeps, per queue (keyed by a SHA-256 of the queue id: the id itself, the only
handle on the queue, is never written down): the owner, the lease and the last sequence number;
each descriptor of its table with how it was opened and the identity of its object; each knote
with every kevent field, its udata and the filter's resumable state (``Kqueue.snapshot``); and
the delivery log that lets a stream resume.

Writes accumulate in one open transaction and become durable at ``commit()``, which the service
calls at its durability points: before a Register/Kevent/Open answer leaves, and before a Wait
stream sends events (the log rows and the knotes those deliveries dropped commit together, so a
crash can neither lose a delivered event nor deliver it twice). ``sync`` chooses what "durable"
survives: "normal" (WAL, no fsync per commit) survives a crash of the daemon; "full" (an fsync
per commit) also survives a power loss, at a cost per commit.

The schema is versioned (``PRAGMA user_version``) and migrated on open. A file that is not a kqd
database, is corrupt, or was written by a newer kqd is refused with StateError: the daemon does
not start rather than silently discard state (``--reset-state`` starts empty on purpose).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kqd.core.kevent import kevent
from kqd.core.linux.knote import KnoteSnapshot

SCHEMA_VERSION = 2
LOG_KEPT = 4096  # events kept per queue for resuming, as the in-memory DeliveryLog

_SCHEMA = """
CREATE TABLE queues (
    key TEXT PRIMARY KEY,          -- sha256 of the queue id, hex
    owner TEXT NOT NULL,           -- the principal's name
    owner_peer TEXT,               -- its kernel credentials (JSON), Unix-socket principals
    lease REAL NOT NULL,
    last_sequence INTEGER NOT NULL
);
CREATE TABLE descriptors (
    key TEXT NOT NULL,
    fd INTEGER NOT NULL,           -- the number the client knows
    kind TEXT NOT NULL,            -- path, peer or connection
    spec TEXT NOT NULL,            -- how it was opened and the identity of its object (JSON)
    PRIMARY KEY (key, fd)
);
CREATE TABLE knotes (
    key TEXT NOT NULL,
    ident INTEGER NOT NULL,        -- a descriptor ident is the client's number
    filter INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    fflags INTEGER NOT NULL,
    data INTEGER NOT NULL,
    udata BLOB NOT NULL,
    disabled INTEGER NOT NULL,
    state TEXT NOT NULL,           -- the filter's resumable state (JSON)
    seq INTEGER NOT NULL,          -- the queue's last sequence when this row was written
    PRIMARY KEY (key, ident, filter)
);
CREATE TABLE batches (             -- the delivery log, a row per batch of numbered events
    key TEXT NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    events BLOB NOT NULL,          -- packed: see _pack
    PRIMARY KEY (key, first)
);
"""


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Version 2 keeps the log as packed batches (a row per event before) and stamps each knote
    row with its queue's log position (a row's position before: its queue's last sequence)."""
    db.execute("ALTER TABLE knotes ADD COLUMN seq INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE knotes SET seq = (SELECT last_sequence FROM queues WHERE queues.key = knotes.key)"
    )
    db.execute(
        "CREATE TABLE batches (key TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,"
        " events BLOB NOT NULL, PRIMARY KEY (key, first))"
    )
    rows = db.execute(
        "SELECT key, sequence, ident, filter, flags, fflags, data, udata FROM events"
    ).fetchall()
    db.executemany(
        "INSERT INTO batches VALUES (?, ?, ?, ?)",
        [
            (key, seq, seq, _pack([kevent(_unsigned(i), f, fl, ff, d, bytes(u))]))
            for key, seq, i, f, fl, ff, d, u in rows
        ],
    )
    db.execute("DROP TABLE events")


# Migrations from version N to N + 1, in order.
_MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1_to_v2]


def default_state_dir() -> Path:
    """/var/lib/kqd for root; $XDG_STATE_HOME/kqd (~/.local/state/kqd) for other users."""
    if os.geteuid() == 0:
        return Path("/var/lib/kqd")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "kqd"


_EVENT = struct.Struct("<QhHIqI")  # ident, filter, flags, fflags, data, len(udata); then udata


def _pack(events: Iterable[kevent]) -> bytes:
    pack = _EVENT.pack
    return b"".join(
        pack(ev.ident, ev.filter, ev.flags, ev.fflags, ev.data, len(ev.udata)) + ev.udata
        for ev in events
    )


def _unpack(packed: bytes) -> Iterator[kevent]:
    offset, size = 0, _EVENT.size
    while offset < len(packed):
        ident, filt, flags, fflags, data, length = _EVENT.unpack_from(packed, offset)
        offset += size
        udata = bytes(packed[offset : offset + length])
        offset += length
        yield kevent(ident, filt, flags, fflags, data, udata)


def _signed(ident: int) -> int:
    """A kevent ident (unsigned 64 bits) as SQLite's signed 64-bit INTEGER."""
    return ident - _2_64 if ident >= _2_63 else ident


def _unsigned(stored: int) -> int:
    return stored + _2_64 if stored < 0 else stored


_2_63, _2_64 = 2**63, 2**64


class StateError(Exception):
    """The state directory cannot be used; the message says why and what to do."""


@dataclass
class QueueRecord:
    """One queue as the store has it."""

    key: str
    owner: str
    owner_peer: dict[str, Any] | None
    lease: float
    last_sequence: int
    descriptors: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    knotes: list[tuple[KnoteSnapshot, int]] = field(default_factory=list)  # and their seq
    events: list[tuple[int, kevent]] = field(default_factory=list)


class StateStore:
    """The database behind ``kqd serve --state-dir`` (see the module docstring)."""

    def __init__(self, directory: Path, *, sync: str = "normal", reset: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / "kqd.sqlite3"
        if reset:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._migrate()
            # Knotes of queues dropped while their rows were being deleted (drop_knotes_of)
            # when the daemon stopped: nothing loads them, so they go now.
            self._db.execute("DELETE FROM knotes WHERE key NOT IN (SELECT key FROM queues)")
            self._db.execute("BEGIN")
            self._committed = self._db.total_changes
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path} is not a usable kqd state file ({exc}); move it away to keep it, "
                "or start with --reset-state to begin empty"
            ) from None

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer kqd (schema {version}; this kqd knows up "
                f"to {SCHEMA_VERSION}); run that kqd, or start with --reset-state to begin empty"
            )
        if version == 0 and tables:
            raise StateError(
                f"{self.path} holds tables but no kqd schema version; it is not kqd's: move it "
                "away, or start with --reset-state to begin empty"
            )
        with self._db:
            if version == 0:
                self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION};")
                return
            self._db.execute("BEGIN")
            for step in _MIGRATIONS[version - 1 :]:
                step(self._db)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ writes

    def put_queue(self, record: QueueRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO queues VALUES (?, ?, ?, ?, ?)",
            (
                record.key,
                record.owner,
                None if record.owner_peer is None else json.dumps(record.owner_peer),
                record.lease,
                record.last_sequence,
            ),
        )

    def drop_queue(self, key: str) -> None:
        """Forget a queue: at once for everything but its knotes, which may be hundreds of
        thousands of rows: ``drop_knotes_of()`` deletes them a bounded number at a time (once
        the queue's row is gone, nothing loads them again)."""
        for table in ("queues", "descriptors", "batches"):
            self._db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))

    def drop_knotes_of(self, key: str, limit: int) -> int:
        """Delete up to *limit* knotes of a dropped queue; how many were deleted."""
        return self._db.execute(
            "DELETE FROM knotes WHERE rowid IN (SELECT rowid FROM knotes WHERE key = ? LIMIT ?)",
            (key, limit),
        ).rowcount

    def put_descriptor(self, key: str, fd: int, kind: str, spec: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO descriptors VALUES (?, ?, ?, ?)",
            (key, fd, kind, json.dumps(spec)),
        )

    def drop_descriptor(self, key: str, fd: int) -> None:
        self._db.execute("DELETE FROM descriptors WHERE key = ? AND fd = ?", (key, fd))

    def put_knotes(self, key: str, snapshots: Iterable[KnoteSnapshot], seq: int) -> None:
        """Write down knotes as they are after sequence number *seq* of their queue's log."""
        self._db.executemany(
            "INSERT OR REPLACE INTO knotes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    key,
                    _signed(snap.change.ident),
                    snap.change.filter,
                    snap.change.flags,
                    snap.change.fflags,
                    snap.change.data,
                    snap.change.udata,
                    int(snap.disabled),
                    json.dumps(snap.state),
                    seq,
                )
                for snap in snapshots
            ],
        )

    def drop_knotes(self, key: str, keys: Iterable[tuple[int, int]]) -> None:
        """Forget knotes, by (ident, filter)."""
        self._db.executemany(
            "DELETE FROM knotes WHERE key = ? AND ident = ? AND filter = ?",
            [(key, _signed(ident), filter_) for ident, filter_ in keys],
        )

    def append_events(self, key: str, batch: list[tuple[int, kevent]]) -> None:
        """Add a batch of delivered events (numbered in a row) to the queue's log: one row."""
        if not batch:
            return
        first, last = batch[0][0], batch[-1][0]
        self._db.execute(
            "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?)",
            (key, first, last, _pack(ev for _, ev in batch)),
        )
        self._db.execute("UPDATE queues SET last_sequence = ? WHERE key = ?", (last, key))

    def trim(self, key: str, last_sequence: int) -> None:
        """Forget the batches that fall wholly out of the LOG_KEPT events a queue keeps."""
        self._db.execute(
            "DELETE FROM batches WHERE key = ? AND last <= ?", (key, last_sequence - LOG_KEPT)
        )

    def commit(self) -> None:
        """Make every write so far durable (see the module docstring for what sync means); a
        transaction with nothing in it costs nothing."""
        if self._db.total_changes != self._committed:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._committed = self._db.total_changes

    def close(self) -> None:
        self.commit()
        self._db.close()

    # ------------------------------------------------------------------ reading back

    def load(self) -> Iterator[QueueRecord]:
        """Every queue with its descriptors, knotes and kept events."""
        db = self._db
        for key, owner, peer, lease, last in db.execute("SELECT * FROM queues").fetchall():
            record = QueueRecord(
                key, owner, None if peer is None else json.loads(peer), lease, last
            )
            for fd, kind, spec in db.execute(
                "SELECT fd, kind, spec FROM descriptors WHERE key = ?", (key,)
            ):
                record.descriptors[fd] = (kind, json.loads(spec))
            for ident, filt, flags, fflags, data, udata, disabled, state, seq in db.execute(
                "SELECT ident, filter, flags, fflags, data, udata, disabled, state, seq "
                "FROM knotes WHERE key = ?",
                (key,),
            ):
                change = kevent(_unsigned(ident), filt, flags, fflags, data, bytes(udata))
                snapshot = KnoteSnapshot(change, bool(disabled), json.loads(state))
                record.knotes.append((snapshot, seq))
            for first, packed in db.execute(
                "SELECT first, events FROM batches WHERE key = ? ORDER BY first", (key,)
            ):
                record.events.extend(enumerate(_unpack(packed), start=first))
            yield record
