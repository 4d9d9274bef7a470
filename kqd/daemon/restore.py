"""Bringing queues back after a restart, re-arming only what is truly the same object.

The seed's lesson decides how: *get your identifiers right*. After a restart a pid may belong to
another process, a path to another file, a descriptor number to nothing. So every object is
checked against the identity written down when it was registered, never re-armed by number:

- files opened by path: re-opened with the owner's rights, kept only if device and inode match;
  VNODE knotes on them then report what changed while the daemon was down (the core's
  VnodeFilter.restore compares the stored size, link count and times);
- descriptors duplicated from other processes: taken again only if the process is the same one
  (pid and start time) and the descriptor still names the same object (inode);
- connections the daemon made: lost with the daemon (their peer saw the close): ECONNABORTED;
- PROC knotes: the core's ProcFilter.restore checks pid, start time and boot id (a newcomer on
  the pid is never watched; the old process's exit is reported with data -1);
- TIMER and USER knotes: their schedule and pending triggers continue (the core's restore).

A knote on a descriptor that could not be brought back reports the end of its object once, as
an event the queue owes: READ/WRITE get EV_EOF (with ECONNABORTED in fflags for a lost
connection), VNODE gets NOTE_REVOKE with EV_EOF (the knote cannot follow its file); the
descriptor stays in the table, dead, until its client closes it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from typing import TYPE_CHECKING, Any

from kqd.core import (
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_FILTER_READ,
    KQ_FILTER_USER,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_REVOKE,
    kevent,
)
from kqd.core.linux.knote import KnoteSnapshot
from kqd.core.linux.proc import process_start_time
from kqd.daemon.authorizer import Authorizer
from kqd.daemon.credentials import Credentials
from kqd.daemon.identity import Principal
from kqd.daemon.remote_queue import RemoteQueue
from kqd.daemon.store import QueueRecord, StateStore

if TYPE_CHECKING:
    from kqd.daemon.service import KQueueService

log = logging.getLogger("kqd.daemon")

# Charged as the queue had been (the policy may have been lowered while the daemon was down:
# what a queue held is never taken away, only new charges are refused).
_UNLIMITED = 2**62
_FS_IOC_GETVERSION = 0x80087601  # _IOR('v', 1, long)


def inode_generation(fd: int) -> int | None:
    """The inode's generation (FS_IOC_GETVERSION), where the file system keeps one (ext4, xfs,
    btrfs): an inode number is handed out again as soon as its file is gone, and only the
    generation tells the new file from the old. None elsewhere (tmpfs, overlayfs)."""
    try:
        answer = fcntl.ioctl(fd, _FS_IOC_GETVERSION, b"\0" * 8)
    except OSError:
        return None
    return int(struct.unpack("q", answer)[0])


def object_identity(kind: str, spec: dict[str, Any], fd: int) -> dict[str, Any]:
    """What identifies the object behind a new descriptor *fd* for good."""
    if kind == "connection":
        return {}
    st = os.fstat(fd)
    if kind == "path":
        return {"dev": st.st_dev, "ino": st.st_ino, "gen": inode_generation(fd)}
    return {"start": process_start_time(spec["pid"]), "ino": st.st_ino}


async def _reopen(
    authorizer: Authorizer, owner: Principal, kind: str, spec: dict[str, Any]
) -> int | None:
    """The same object as before the restart, opened again with the owner's rights; None when
    it is gone, replaced, or no longer the owner's to open."""
    try:
        if kind == "path":
            fd = await authorizer.open_path(owner, spec["path"])
        elif kind == "peer" and process_start_time(spec["pid"]) == spec["start"]:
            fd = authorizer.open_peer_fd(owner, spec["pid"], spec["fd"])
        else:
            return None
    except OSError:
        return None
    identity = object_identity(kind, spec, fd)
    if identity != {key: spec.get(key) for key in identity}:
        os.close(fd)
        return None
    return fd


def _owed_end(snapshot: KnoteSnapshot, kind: str) -> kevent:
    """The one event a knote on a descriptor that did not come back reports."""
    change = snapshot.change
    if change.filter == KQ_FILTER_VNODE:
        fflags = KQ_NOTE_REVOKE
    else:
        fflags = errno.ECONNABORTED if kind == "connection" else 0
    return kevent(change.ident, change.filter, change.flags | KQ_EV_EOF, fflags, 0, change.udata)


async def restore_queue(
    record: QueueRecord, queue: RemoteQueue, owner: Principal, authorizer: Authorizer
) -> None:
    """Fill the new *queue* from *record*: its log, its descriptors and its knotes."""
    queue.log.restore(record.events, record.last_sequence)
    usage = queue.usage
    lost = 0
    for number, (kind, spec) in sorted(record.descriptors.items()):
        fd = await _reopen(authorizer, owner, kind, spec)
        queue.descriptors.add(fd, kind, spec, number)
        if fd is not None:
            usage.charge("descriptors", 1, _UNLIMITED)
        else:
            lost += 1
            log.debug("queue %s: descriptor %d (%s) did not come back", queue.short, number, kind)
    if lost:
        log.info("queue %s: %d of its descriptors did not come back", queue.short, lost)
    delivered = {(ev.ident, ev.filter): seq for seq, ev in record.events}  # the last of each
    refused: dict[str, int] = {}  # why knotes could not be restored, and how many
    for snapshot, seq in record.knotes:
        change = snapshot.change
        _consumed_since(snapshot, seq, delivered)
        number = change.ident
        if change.filter in (KQ_FILTER_READ, KQ_FILTER_WRITE, KQ_FILTER_VNODE):
            entry = queue.descriptors.entries.get(number)
            if entry is None or entry.real is None:
                queue.inject(_owed_end(snapshot, "" if entry is None else entry.kind))
                continue
            change.ident = entry.real
        try:
            queue.kq.restore(snapshot)
        except OSError as exc:
            refused[exc.strerror or str(exc)] = refused.get(exc.strerror or str(exc), 0) + 1
            queue.forget_knote(number, change.filter)
    for reason, count in refused.items():
        log.warning("queue %s: %d knote(s) not restored: %s", queue.short, count, reason)
    queue.persist()


def _consumed_since(
    snapshot: KnoteSnapshot, seq: int, delivered: dict[tuple[int, int], int]
) -> None:
    """A USER knote written down triggered, then delivered (the log says so, after *seq*):
    with EV_CLEAR, that delivery consumed the trigger (see remote_queue's _STATEFUL)."""
    change = snapshot.change
    if (
        change.filter == KQ_FILTER_USER
        and change.flags & KQ_EV_CLEAR
        and snapshot.state.get("triggered")
        and delivered.get((change.ident, change.filter), 0) > seq
    ):
        snapshot.state["triggered"] = False


def owner_of(record: QueueRecord) -> Principal:
    """The principal a stored queue belongs to, with the credentials it connected with."""
    peer = record.owner_peer
    if peer is None:
        return Principal(record.owner)
    creds = Credentials(peer["uid"], peer["gid"], tuple(peer["groups"]), peer["pid"])
    return Principal(record.owner, creds)


async def restore_all(service: KQueueService, store: StateStore) -> int:
    """Serve again every queue *store* holds; how many."""
    count = 0
    for record in store.load():
        owner = owner_of(record)
        usage = service.accounts.usage(owner.name)
        usage.charge("queues", 1, _UNLIMITED)
        usage.charge_daemon_fds(RemoteQueue.OWN_DESCRIPTORS)
        queue = RemoteQueue(record.lease, owner.name, usage, store, key=record.key)
        service.adopt_queue(queue, owner)
        await restore_queue(record, queue, owner, service.authorizer)
        count += 1
    return count
