"""Where the daemon is: ``--target``, then ``KQD_TARGET``, then the default socket."""

from __future__ import annotations

import os

from kqd.default_socket import default_socket

TARGET_ENV = "KQD_TARGET"
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def resolve_target(target: str | None) -> str:
    """A gRPC target: ``unix:///path``, ``unix:/path``, a bare ``/path`` or ``host:port``."""
    target = target or os.environ.get(TARGET_ENV) or default_socket()
    if target.startswith("/"):
        return f"unix://{target}"
    return target
