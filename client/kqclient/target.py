"""Where the daemon is: ``--target``, then ``KQD_TARGET``, then the default socket."""

from __future__ import annotations

import os

TARGET_ENV = "KQD_TARGET"
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def default_target() -> str:
    """The socket ``kqd serve`` listens on by default for this user."""
    if os.geteuid() == 0:
        return "unix:///run/kqd/kqd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/kqd-{os.getuid()}"
    return f"unix://{runtime}/kqd/kqd.sock"


def resolve_target(target: str | None) -> str:
    """A gRPC target: ``unix:///path``, ``unix:/path``, a bare ``/path`` or ``host:port``."""
    target = target or os.environ.get(TARGET_ENV) or default_target()
    if target.startswith("/"):
        return f"unix://{target}"
    return target
