"""The tools users would pick instead of kqd, and how the benchmark gets them.

``python -m bench setup`` installs them: Debian's procps (pidwait), coreutils (tail),
inotify-tools (inotifywait), watchman and wait-for-it, and PyPI's psutil, watchdog and
pywatchman. A peer that is missing is reported as skipped, never faked.
"""

from __future__ import annotations

import compileall
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


def byte_compiled() -> None:
    """Byte-compile kqd and kqclient, as installing them does (pip compiles at install; the
    container image ships the bytecode). A checkout's editable install run with
    PYTHONDONTWRITEBYTECODE=1 never keeps bytecode, so every command the benchmark starts would
    compile every module again, about 13 ms a start that no installed kqctl pays. Python only
    uses bytecode that matches its source: a module edited since is compiled as before."""
    import kqclient

    import kqd

    for package in (kqd, kqclient):
        compileall.compile_dir(Path(package.__file__).parent, quiet=1)


def kqctl(target: str) -> list[str]:
    """kqctl as users run it: the installed entry point next to this interpreter, with its
    bytecode compiled (byte_compiled())."""
    byte_compiled()
    installed = Path(sys.executable).with_name("kqctl")
    command = [str(installed)] if installed.exists() else [sys.executable, "-m", "kqclient.kqctl"]
    return [*command, "--target", target]


def setup() -> int:
    """Install every peer (needs root for apt-get)."""
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *DEBIAN_PACKAGES], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *PYPI_PACKAGES], check=True)
    return 0
