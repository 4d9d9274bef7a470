"""Where ``kqd serve`` listens, and how each kind of address tells who is calling.

- ``unix:///path``: the public socket (mode 0660: its owner and group may connect) is accepted
  by a PeerCredentialRelay, so every call carries the kernel's credentials of its caller.
- ``host:port`` with ``--tls-cert``, ``--tls-key`` and ``--tls-client-ca``: TLS, and a client
  certificate signed by that CA is required; the principal is the certificate's name.
- ``host:port`` without TLS: only with ``--insecure-tcp``, and only on loopback addresses:
  anyone on the host can connect and nobody is identified.

Every refusal is a ListenError whose message says what to do; gRPC is asked to bind only what
was checked first, so its own error lines never precede ours.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

from kqd.daemon.peer_relay import PeerCredentialRelay
from kqd.default_socket import default_socket


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate and key, and the CA that signs client certificates."""

    cert: Path
    key: Path
    client_ca: Path

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes(),
            require_client_auth=True,
        )


class ListenError(Exception):
    """An address kqd cannot listen on; the message says why and what to do, ``status`` is
    kqd serve's exit status (1: the address is taken, 2: it is unusable)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def socket_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


def _answers(path: Path) -> bool:
    """Does something accept connections on the Unix socket *path*?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _prepare_unix(address: str, path: Path) -> None:
    """Make *path* ready to bind: refuse a live socket, remove a dead one. Only the default
    socket's directory is created; any other must exist (a typo must not grow a tree)."""
    if _answers(path):
        raise ListenError(
            f"{address} is in use: a kqd (or another program) already listens there; stop it "
            "or choose another --listen",
            status=1,
        )
    try:
        if address == default_socket():
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise ListenError(
                f"cannot listen on {address}: directory {path.parent} does not exist; create "
                "it or choose another --listen"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left behind by a daemon that died: nobody answers on it
    except OSError as exc:
        raise ListenError(
            f"cannot prepare {path}: {exc.strerror}; run as a user who may write there, or "
            "choose another --listen"
        ) from None


def _tcp_addresses(address: str) -> list[tuple]:
    """The socket addresses *address* (host:port) names; ListenError when it names none."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ListenError(
            f"cannot listen on {address}: give unix:///path, or host:port with a port in 0..65535"
        )
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ListenError(f"cannot listen on {address}: {exc.strerror}") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _check_bindable(address: str, addresses: list[tuple]) -> None:
    try:
        for family, sockaddr in addresses:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
    except OSError as exc:
        raise ListenError(
            f"cannot listen on {address}: {exc.strerror}; choose a local address and a free port"
        ) from None


class Listeners:
    """The addresses one server listens on, and the relays that identify Unix callers."""

    def __init__(
        self, tls: TlsFiles | None, insecure_tcp: bool, socket_group: int | None = None
    ) -> None:
        self.tls = tls
        self.insecure_tcp = insecure_tcp
        self.socket_group = socket_group
        self.relays: list[PeerCredentialRelay] = []
        self.bound: list[str] = []  # as logged: with the port actually bound

    def add(self, server: grpc.aio.Server, address: str) -> None:
        path = socket_path(address)
        if path is not None:
            _prepare_unix(address, path)
            relay = PeerCredentialRelay(path)
            self.relays.append(relay)
            self._add_port(server, relay.private_target, address, secure=False)
            self.bound.append(address)
            return
        addresses = _tcp_addresses(address)
        if self.tls is None:
            if not self.insecure_tcp:
                raise ListenError(
                    f"refusing plain TCP on {address}: anyone who reaches it is unidentified. "
                    "Give --tls-cert, --tls-key and --tls-client-ca, or --insecure-tcp for a "
                    "loopback address"
                )
            if not all(ipaddress.ip_address(a[1][0]).is_loopback for a in addresses):
                raise ListenError(
                    f"refusing --insecure-tcp on {address}: plain TCP only on loopback "
                    "(127.0.0.1, ::1); use TLS for other addresses"
                )
        _check_bindable(address, addresses)
        port = self._add_port(server, address, address, secure=self.tls is not None)
        self.bound.append(f"{address.rpartition(':')[0]}:{port}")

    def _add_port(self, server: grpc.aio.Server, target: str, address: str, secure: bool) -> int:
        try:
            if secure and self.tls is not None:
                return server.add_secure_port(target, self.tls.credentials())
            return server.add_insecure_port(target)
        except (RuntimeError, OSError) as exc:
            raise ListenError(f"cannot listen on {address}: {exc}") from None

    def start(self) -> None:
        """Accept on the public Unix sockets (once the gRPC server runs): mode 0660, so their
        owner and group may connect (the group given with --socket-group, if any)."""
        for relay in self.relays:
            if self.socket_group is not None:
                os.chown(relay.path, -1, self.socket_group)
            relay.path.chmod(0o660)
            relay.start()

    def stop_accepting(self) -> None:
        """Shutdown has begun: no new Unix connections (relayed ones go on until close)."""
        for relay in self.relays:
            relay.stop_accepting()

    def close(self) -> None:
        for relay in self.relays:
            relay.close()
            with contextlib.suppress(FileNotFoundError):
                relay.path.unlink()
