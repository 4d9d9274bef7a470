"""Run a kqclient program as a real unprivileged user, the way that user would run it.

CI runs as root, and this interpreter may live where other users cannot execute it (a 0700 home),
so the program starts as root, imports what it needs, then drops to the user for good (groups,
gid, uid: real, effective and saved) before it connects. From then on it is that user to the
kernel: SO_PEERCRED reports its uid and groups, and every permission check is the user's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.conftest import WAIT_BOUND
from tests.security.users import TestUser

_PROLOGUE = """\
import errno, json, os, socket, sys
import kqclient
from kqclient import *

os.setgroups({groups})
os.setresgid({gid}, {gid}, {gid})
os.setresuid({uid}, {uid}, {uid})
client = kqclient.connect({target!r})


def outcome(call):
    \"\"\"What a call did, as JSON: its result, or the exception's type and errno.\"\"\"
    try:
        return {{"ok": call()}}
    except Exception as exc:
        return {{"error": type(exc).__name__, "errno": getattr(exc, "errno", None),
                 "message": str(exc)}}


def say(**record):
    print(json.dumps(record), flush=True)
"""


def run_as(user: TestUser, target: str, program: str, cwd: Path) -> dict[str, Any]:
    """Run *program* (Python, with ``client``, ``outcome`` and ``say`` defined) as *user*
    against the daemon at *target*; the fields of every ``say(...)`` record, merged."""
    prologue = _PROLOGUE.format(groups=list(user.groups), gid=user.gid, uid=user.uid, target=target)
    result = subprocess.run(
        [sys.executable, "-c", prologue + textwrap.dedent(program)],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND * 3,
        cwd=cwd,
    )
    assert result.returncode == 0, f"as {user.name}: {result.stderr}"
    merged: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        merged.update(json.loads(line))
    return merged
