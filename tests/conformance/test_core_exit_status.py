"""NOTE_EXIT's status for another user's process, seen by an unprivileged watcher.

Without ptrace rights over the process, /proc hides its exit code, so the status only exists once
its parent reaps it (PIDFD_GET_INFO). The race this guards against: the watcher sees the exit
before the parent reaps. Each step is sequenced through pipes, no sleeping:

* the *parent* (root) forks the *target*, which becomes another user and exits with 7 when the
  test closes a pipe; the parent reaps it only when the test says so;
* the *watcher* is the core in a process that gave up root (another uid, no capabilities): it
  registers NOTE_EXIT, sees the exit through a pidfd of its own, and polls its kqueue once, so
  the exit edge has been handled before the reap. Then it waits for the event.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kqd.core.linux import proc, syscalls
from tests.conftest import WAIT_BOUND

TARGET_UID = 65534  # nobody
WATCHER_UID = 65533

PARENT = f"""
import os, sys
release = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.setgid({TARGET_UID}); os.setgroups([]); os.setuid({TARGET_UID})
    os.read(release, 1)
    os._exit(7)
print(pid, flush=True)
sys.stdin.readline()  # the test: "reap it now"
os.waitpid(pid, 0)
"""

WATCHER = f"""
import os, select, sys, time
from kqd.core import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent, kqueue
kqueue().close()  # every module the core needs is loaded while files are still readable
os.setgid({WATCHER_UID}); os.setgroups([]); os.setuid({WATCHER_UID})
pid, bound = int(sys.argv[1]), float(sys.argv[2])
kq = kqueue()
kq.control([kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT)], 0)
own = os.pidfd_open(pid)
print("ready", flush=True)
assert select.select([own], [], [], bound)[0], "the target did not exit"
events = kq.control(None, 4, 0)  # the exit edge, handled before the parent reaps
print("seen", flush=True)
start = time.monotonic()
events = events or kq.control(None, 4, bound)
print(events[0].data if events else "none", time.monotonic() - start, flush=True)
"""


@dataclass
class Scene:
    parent: subprocess.Popen
    watcher: subprocess.Popen
    release: int

    def target_exits(self) -> None:
        os.close(self.release)
        self.release = -1
        assert self.watcher.stdout is not None
        assert self.watcher.stdout.readline() == "seen\n"

    def parent_reaps(self) -> None:
        assert self.parent.stdin is not None
        if not self.parent.stdin.closed:
            self.parent.stdin.write("\n")
            self.parent.stdin.close()  # told once: the parent reaps, then exits

    def reported(self) -> tuple[int, float]:
        """NOTE_EXIT's data, and how long the watcher waited for it after the exit."""
        assert self.watcher.stdout is not None
        data, waited = self.watcher.stdout.readline().split()
        return int(data), float(waited)


@pytest.fixture
def scene() -> Iterator[Scene]:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run the target and the watcher as two other users")
    if not syscalls.pidfd_exit_code_supported():
        pytest.skip("exit codes in PIDFD_GET_INFO need Linux >= 6.15")
    release_r, release_w = os.pipe()
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(release_r)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        pass_fds=[release_r],
    )
    os.close(release_r)
    assert parent.stdout is not None
    target = int(parent.stdout.readline())
    bound = proc.REAP_WAIT_NS / 1e9 + WAIT_BOUND
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(target), str(bound)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert watcher.stdout is not None and watcher.stdout.readline() == "ready\n"
    made = Scene(parent, watcher, release_w)
    try:
        yield made
    finally:
        if made.release >= 0:
            os.close(made.release)
        made.parent_reaps()
        for process in (watcher, parent):
            try:
                process.wait(WAIT_BOUND)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()


def test_status_waits_for_a_late_reap(scene: Scene) -> None:
    scene.target_exits()
    scene.parent_reaps()
    data, _ = scene.reported()
    assert data == 7 << 8, "the exit status of a process reaped after its exit was lost"


def test_a_parent_that_does_not_reap_gives_minus_one_after_the_bound(scene: Scene) -> None:
    started = time.monotonic()
    scene.target_exits()
    data, waited = scene.reported()
    assert data == -1
    assert proc.REAP_WAIT_NS / 1e9 - 0.1 <= waited <= time.monotonic() - started
