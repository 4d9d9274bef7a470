"""The tools users would pick instead of kqd, and how the benchmark gets them.

``python -m bench setup`` installs them: Debian's procps (pidwait), coreutils (tail),
inotify-tools (inotifywait), watchman and wait-for-it, and PyPI's psutil, watchdog and
pywatchman. A peer that is missing is reported as skipped, never faked.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

DEBIAN_PACKAGES = ["procps", "coreutils", "inotify-tools", "watchman", "wait-for-it"]
PYPI_PACKAGES = ["psutil>=7.2.2", "watchdog", "pywatchman", "matplotlib"]


class Skip(Exception):  # noqa: N818 - a verdict, not an error
    """A peer that cannot run here, with the reason."""


def need_command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Skip(f"{name} is not installed (python -m bench setup)")
    return path


def need_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise Skip(f"Python module {name} is not installed (python -m bench setup)")


def kqctl(target: str) -> list[str]:
    """kqctl as users run it: the installed entry point next to this interpreter."""
    installed = Path(sys.executable).with_name("kqctl")
    command = [str(installed)] if installed.exists() else [sys.executable, "-m", "kqclient.kqctl"]
    return [*command, "--target", target]


def setup() -> int:
    """Install every peer (needs root for apt-get)."""
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *PYPI_PACKAGES], check=True)
    return 0
