"""Where the daemon is and how to reach it: ``--target``, then ``KQD_TARGET``, then the default
socket; TLS client files from the arguments or ``KQD_TLS_CA``/``KQD_TLS_CERT``/``KQD_TLS_KEY``."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from kqd.default_socket import default_socket

TARGET_ENV = "KQD_TARGET"
TLS_ENV = ("KQD_TLS_CA", "KQD_TLS_CERT", "KQD_TLS_KEY")
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # A daemon restart is a pause: reconnect within a second of its return, not after gRPC's
    # default backoff (up to 120 s), and never through a connection another channel of this
    # process saw break (subchannels are shared across channels by default).
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.use_local_subchannel_pool", 1),
]
# wait_for_daemon(): how often a Unix socket is probed for a listener (a connect() on a path:
# under 1% of a core while nobody is there), and the pause after a health call that could not
# reach the daemon (a new channel per try, about 2-3 ms of CPU: some 5% of a core while a host:port
# does not answer). gRPC's own reconnect backoff cannot do this: whatever the channel options
# say, it waits at least 100 ms (+-20% jitter) between two connection attempts.
PROBE_INTERVAL = 0.01
RETRY_INTERVAL = 0.05


def resolve_target(target: str | None) -> str:
    """A gRPC target: ``unix:///path``, ``unix:/path``, a bare ``/path`` or ``host:port``."""
    target = target or os.environ.get(TARGET_ENV) or default_socket()
    if target.startswith("/"):
        return f"unix://{target}"
    return target


@dataclass(frozen=True)
class TlsClientFiles:
    """PEM files for a TLS listener: the CA that signed the daemon's certificate, and this
    client's certificate and key (kqd requires one)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_env(cls) -> TlsClientFiles | None:
        """From ``KQD_TLS_CA``, ``KQD_TLS_CERT`` and ``KQD_TLS_KEY``, when all three are set."""
        values = [os.environ.get(name) for name in TLS_ENV]
        if not any(values):
            return None
        if not all(values):
            raise ValueError(f"TLS needs all of {', '.join(TLS_ENV)}")
        return cls(*(Path(v) for v in values if v))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def open_channel(target: str, tls: TlsClientFiles | None, *, aio: bool = False) -> Any:
    """A gRPC channel to *target* (sync, or asyncio with *aio*); TLS when *tls* is given."""
    module = grpc.aio if aio else grpc
    if tls is None:
        return module.insecure_channel(target, options=CHANNEL_OPTIONS)
    return module.secure_channel(target, tls.credentials(), options=CHANNEL_OPTIONS)


def unix_socket_path(target: str) -> str | None:
    """The path of a ``unix:`` target (``unix:///abs``, ``unix:/abs``, ``unix:rel``); None for
    any other target."""
    if target.startswith("unix://"):
        return target.removeprefix("unix://")
    if target.startswith("unix:"):
        return target.removeprefix("unix:")
    return None


def listening(path: str) -> bool:
    """True when a connect() to the Unix socket *path* succeeds now (someone listens there;
    a gRPC server may not have started answering yet)."""
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)  # a full backlog says EAGAIN (not yet) instead of blocking
        return probe.connect_ex(path) == 0
