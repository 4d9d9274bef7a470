"""Where ``kqd serve`` listens when told nothing, and where clients look for it."""

from __future__ import annotations

import os

SYSTEM_SOCKET = "unix:///run/kqd/kqd.sock"


def default_socket() -> str:
    """The system socket for root; for other users, one under their runtime directory."""
    if os.geteuid() == 0:
        return SYSTEM_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/kqd-{os.getuid()}"
    return f"unix://{runtime}/kqd/kqd.sock"
