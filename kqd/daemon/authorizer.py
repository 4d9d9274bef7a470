"""What a principal may reach through kqd: what it could reach by itself, plus what policy grants.

The kernel decides the first part. kqd opens a path, connects to a Unix socket and duplicates a
peer's descriptor *as the caller* (CallerAccess: the caller's uid, gid and groups), so there is no
stat-based guess and no check-then-open race. The policy (Rules) then narrows it (denied and
allowed path prefixes, connect destinations, which operations at all) and widens it (prefixes
opened with the daemon's own rights, a local identity for TLS principals, privileged callers).

Paths are judged by the real path of the descriptor actually opened (``/proc/self/fd``), never by
the string the client sent: a symlink cannot lead out of a prefix. A denial looks like the
kernel's own EACCES, so a path the caller may not see cannot be told apart from one that is
missing. Every Open, OpenPeerFd and OpenConnection, granted or denied, is one line of the
``kqd.audit`` log: the principal and the object, never the queue.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from kqd.daemon.caller_access import CallerAccess
from kqd.daemon.connections import ConnectTarget, connect_when_listening, start_connect
from kqd.daemon.identity import Principal
from kqd.daemon.policy import Policy, Rules

audit = logging.getLogger("kqd.audit")


def _real_path(fd: int) -> str:
    path = os.readlink(f"/proc/self/fd/{fd}")
    return path.removesuffix(" (deleted)")


def _denied(what: str, why: str, filename: str | None = None) -> PermissionError:
    return PermissionError(errno.EACCES, f"{what} refused: {why}", filename)


class Authorizer:
    """Performs Open, OpenPeerFd and OpenConnection for a principal, or refuses them."""

    def __init__(self, policy: Policy, access: CallerAccess) -> None:
        self.policy = policy  # replaced whole on SIGHUP
        self.access = access

    def rules(self, principal: Principal) -> Rules:
        return self.policy.for_principal(principal)

    async def open_path(self, principal: Principal, path: str) -> int:
        """A read-only, non-blocking descriptor for *path*, or the error the caller would get."""
        rules = self.rules(principal)
        refusal: OSError = _denied("Open", f"{principal.name} has no local identity", path)
        if rules.identity is not None:
            try:
                fd = await self.access.open(rules.identity, path)
            except OSError as exc:
                refusal = exc
            else:
                return self._judge(principal, rules, fd, path, "caller")
        if rules.may_grant(path):
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            return self._judge(principal, rules, fd, path, "granted")
        audit.info("%s Open %s: refused (%s)", principal.name, path, refusal.strerror)
        raise refusal

    def _judge(self, principal: Principal, rules: Rules, fd: int, path: str, how: str) -> int:
        """Keep *fd* if the policy allows its real path opened *how* ("caller": with the
        caller's rights, "granted": with the daemon's); else close it and refuse."""
        real = _real_path(fd)
        decision = rules.path_decision(real)
        if decision == "deny" or (how == "granted" and decision != "granted"):
            os.close(fd)
            audit.info("%s Open %s (%s): denied by policy", principal.name, path, real)
            raise _denied("Open", "the policy denies this path", path)
        audit.info("%s Open %s (%s): %s", principal.name, path, real, how)
        return fd

    def open_peer_fd(self, principal: Principal, pid: int, target_fd: int) -> int:
        """A duplicate of descriptor *target_fd* of process *pid*, when the caller could take
        it itself (the kernel's ptrace rule) and the policy allows OpenPeerFd."""
        rules = self.rules(principal)
        what = f"descriptor {target_fd} of process {pid}"
        if not rules.open_peer_fd or rules.identity is None:
            audit.info("%s OpenPeerFd %s: denied by policy", principal.name, what)
            raise PermissionError(errno.EPERM, "OpenPeerFd refused by the policy", what)
        creds = rules.identity
        if principal.peer is not None and creds.uid == principal.peer.uid:
            creds = principal.peer  # its pid: a process may always take its own descriptors
        try:
            fd = self.access.getfd(creds, pid, target_fd)
        except OSError as exc:
            audit.info("%s OpenPeerFd %s: refused (%s)", principal.name, what, exc.strerror)
            raise OSError(exc.errno, exc.strerror, what) from None
        audit.info("%s OpenPeerFd %s: granted", principal.name, what)
        return fd

    async def open_connection(
        self,
        principal: Principal,
        address: str,
        family: int,
        target: ConnectTarget,
        retry_for: float = 0.0,
    ) -> int:
        """A descriptor connecting to *address* (checked and resolved by connection_target
        into *family* and *target*): host:port from the daemon, when the policy lists the
        destination (tried again while refused, for up to *retry_for* seconds); unix:/path
        with the caller's rights."""
        rules = self.rules(principal)
        if family == socket.AF_UNIX:
            if not rules.connect_unix or rules.identity is None:
                audit.info("%s OpenConnection %s: denied by policy", principal.name, address)
                raise _denied("OpenConnection", "the policy allows no Unix sockets", address)
            try:
                fd = await self.access.connect_unix(rules.identity, str(target))
            except OSError as exc:
                audit.info("%s OpenConnection %s: %s", principal.name, address, exc.strerror)
                raise
        else:
            ip, port = str(target[0]), int(target[1])
            if not rules.connect_allowed(ip, port):
                audit.info("%s OpenConnection %s: denied by policy", principal.name, address)
                raise _denied(
                    "OpenConnection", f"the policy does not list {ip} port {port}", address
                )
            fd = (
                await connect_when_listening(socket.AddressFamily(family), target, retry_for)
                if retry_for > 0
                else start_connect(socket.AddressFamily(family), target)
            )
        audit.info("%s OpenConnection %s: started", principal.name, address)
        return fd
