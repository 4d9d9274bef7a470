"""The helper process that acts with one caller's credentials, and the two operations it does.

``caller_access`` starts it as root with ``python -I -S caller_helper.py FD UID GID GROUPS``: it
imports what it needs while still root, drops to the caller's groups, gid and uid for good, says
"ready" on the socket *FD* (a SOCK_SEQPACKET socketpair end), then serves requests until the
daemon closes its end. Each request is one message, ``<IB`` (request id, operation) followed by
the path's bytes; each answer is one message ``<Ii`` (request id, errno), carrying the new
descriptor over SCM_RIGHTS when errno is 0. The ready message is request id 0; a failed start
sends id 0 with the errno and a reason, and exits.

Standard library only, and nothing imported lazily: with ``-I -S`` the daemon's virtualenv and
source tree are not on sys.path, and after the drop the interpreter's own files may no longer be
readable (an interpreter under a 0700 home is common). The daemon imports :func:`open_path` and
:func:`connect_unix` from here too, for callers it serves directly: one definition of each
operation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import sys

REQUEST = struct.Struct("<IB")  # request id, operation; the path's bytes follow
ANSWER = struct.Struct("<Ii")  # request id, errno (0: one descriptor rides along)
OP_OPEN = 1
OP_CONNECT_UNIX = 2
MAX_PATH_BYTES = 8192  # more than PATH_MAX: longer paths are refused before they are sent


def open_path(path: bytes) -> int:
    """``open(path, O_RDONLY|O_NONBLOCK|O_CLOEXEC)``: what a remote queue's Open does."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def connect_unix(path: bytes) -> int:
    """A non-blocking SOCK_STREAM socket connected (or connecting) to the Unix socket *path*.

    A Unix connect never returns EINPROGRESS: it succeeds at once or fails at once (EAGAIN when
    the listener's backlog is full), so every error is raised, with the kernel's errno."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        try:
            code = sock.connect_ex(path)
        except OSError as exc:  # "AF_UNIX path too long" comes without an errno
            code = exc.errno or errno.ENAMETOOLONG
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return sock.detach()
    finally:
        sock.close()


OPERATIONS = {OP_OPEN: open_path, OP_CONNECT_UNIX: connect_unix}


def drop_privileges(uid: int, gid: int, groups: list[int]) -> None:
    """Become *uid*/*gid*/*groups* irrevocably: real, effective, saved and filesystem ids.

    Leaving uid 0 for a non-zero uid clears the capability sets (no SECBIT_KEEP_CAPS here), and
    changing the effective uid makes the process non-dumpable (fs.suid_dumpable is 0 by default),
    so the caller's uid can signal this helper but not ptrace it nor read its memory."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise PermissionError(errno.EPERM, "the credentials did not change")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PermissionError(errno.EPERM, "uid 0 could be regained after the drop")


def serve(sock: socket.socket) -> None:
    """Answer requests one at a time, in order, until the daemon closes its end."""
    while True:
        try:
            message, _, flags, _ = sock.recvmsg(REQUEST.size + MAX_PATH_BYTES)
        except ConnectionResetError:
            return
        if len(message) < REQUEST.size:
            return  # end of file (or a message this protocol never sends)
        request_id, op = REQUEST.unpack_from(message)
        operation = OPERATIONS.get(op)
        try:
            if flags & socket.MSG_TRUNC:  # never cut a path short: that would be another path
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
            if operation is None:
                raise OSError(errno.EINVAL, f"unknown operation {op}")
            fd = operation(message[REQUEST.size :])
        except OSError as exc:
            sock.send(ANSWER.pack(request_id, exc.errno or errno.EIO))
            continue
        try:
            socket.send_fds(sock, [ANSWER.pack(request_id, 0)], [fd])
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    fd, uid, gid = (int(arg) for arg in argv[:3])
    groups = [int(g) for g in argv[3].split(",") if g] if len(argv) > 3 else []
    sock = socket.socket(fileno=fd)
    try:
        drop_privileges(uid, gid, groups)
    except OSError as exc:
        sock.send(ANSWER.pack(0, exc.errno or errno.EPERM) + str(exc).encode(errors="replace"))
        return 1
    sock.send(ANSWER.pack(0, 0))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        serve(sock)  # until the daemon closes its end, or exits
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
