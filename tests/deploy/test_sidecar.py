"""The sidecar for real: the image built from deploy/Containerfile, a pod with an app and kqd
sharing its PID namespace, exercised from the host over the socket on a bind-mounted volume.

Needs rootful podman (with runc and debootstrap for the local base image: .ci/run installs
them); skipped with the reason where no container engine can run.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kqclient
import pytest
from kqclient import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_FILTER_PROC,
    KQ_FILTER_VNODE,
    KQ_NOTE_EXIT,
    KQ_NOTE_WRITE,
    kevent,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
IMAGE = "localhost/kqd:test"
BASE = "localhost/kqd-base:bookworm"
BOUND = 60.0
KQD_UID = 65532

# The app: a worker that exits with 7 when released, a writer that appends to a log when
# asked, a listener started when asked; each waits on a FIFO the host writes to.
APP = r"""
set -e
cd /shared
mkfifo release write listen
: > app.log
sh -c 'echo $$ > worker.tmp; mv worker.tmp worker.pid; read x < release; exit 7' &
sh -c 'read x < write; echo hello >> app.log' &
sh -c 'read x < listen; exec python3 -m http.server --bind 127.0.0.1 8080' &
wait
"""


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONTAINERS_CONF": str(DEPLOY / "containers.conf")}
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result


def _container_engine_or_skip() -> None:
    if shutil.which("podman") is None:
        pytest.skip("no container engine: podman is not installed (apt-get install podman runc)")
    if os.geteuid() != 0:
        pytest.skip("the container test needs rootful podman; run it as root")
    info = podman("info", check=False, timeout=60)
    if info.returncode != 0:
        pytest.skip(f"podman cannot run containers here: {info.stderr.strip()[-300:]}")


def _wait_until(what: str, ready, bound: float = BOUND):
    """Poll *ready()* (a cheap check of an outside event) until it is truthy, within *bound*."""
    deadline = time.monotonic() + bound
    while True:
        value = ready()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {bound}s for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    _container_engine_or_skip()
    env = {**os.environ, "CONTAINERS_CONF": str(DEPLOY / "containers.conf")}
    if podman("image", "exists", BASE, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(
                "no base image and no debootstrap to build one (apt-get install debootstrap)"
            )
        subprocess.run(["bash", DEPLOY / "build-base.sh"], check=True, env=env, timeout=900)
    subprocess.run(
        ["bash", DEPLOY / "build-wheels.sh"],
        check=True,
        timeout=900,
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
    )
    podman(
        "build",
        "--pull=never",
        "--format",
        "docker",
        "-f",
        str(DEPLOY / "Containerfile"),
        "-t",
        IMAGE,
        str(ROOT),
    )
    yield IMAGE
    podman("image", "prune", "-f", check=False)  # earlier builds' layers, now untagged


def _write_fifo(path: Path) -> None:
    def opened() -> int | None:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENXIO, errno.ENOENT):
                return None  # no reader yet
            raise

    fd = _wait_until(f"a reader on {path.name}", opened)
    os.write(fd, b"go\n")
    os.close(fd)


class Pod:
    def __init__(self, image: str, base: Path) -> None:
        self.name = f"kqd-test-{uuid.uuid4().hex[:8]}"
        self.run_dir, self.shared = base / "run", base / "shared"
        self.run_dir.mkdir()
        self.shared.mkdir()
        os.chown(self.run_dir, KQD_UID, KQD_UID)
        podman("pod", "create", "--name", self.name, "--share", "ipc,net,uts,pid")
        self._start("app", "-v", f"{self.shared}:/shared", BASE, "sh", "-c", APP)
        self._start("kqd", "-v", f"{self.run_dir}:/run/kqd", "-v", f"{self.shared}:/shared", image)
        self.socket = self.run_dir / "kqd.sock"
        self.target = f"unix://{self.socket}"

    def _start(self, role: str, *args: str) -> None:
        podman("run", "-d", "--pod", self.name, "--name", f"{self.name}-{role}", *args)

    def kqctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kqclient.kqctl", "--target", self.target, *args],
            capture_output=True,
            text=True,
            timeout=BOUND,
        )

    def remove(self) -> None:
        podman("pod", "rm", "-f", "-t", "0", self.name, check=False, timeout=120)


@pytest.fixture
def pod(image: str, tmp_path: Path) -> Iterator[Pod]:
    running = Pod(image, tmp_path)
    try:
        yield running
    finally:
        running.remove()


def test_sidecar_pod(pod: Pod) -> None:
    kqclient.wait_for_daemon(pod.target, timeout=BOUND)
    assert pod.kqctl("health").stdout == "SERVING\n"
    worker = int(
        _wait_until(
            "the app's worker",
            lambda: (
                (pod.shared / "worker.pid").exists()
                and (pod.shared / "worker.pid").read_text().strip()
            ),
        )
    )

    with kqclient.connect(pod.target) as client:
        kq = client.kqueue()
        # 1. a process of the app exits: its exit status reaches the host
        kq.control([kevent(worker, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT, 0, b"worker")], 0)
        _write_fifo(pod.shared / "release")
        (ev,) = kq.control(None, 1, BOUND)
        assert (ev.ident, ev.fflags, ev.udata) == (worker, KQ_NOTE_EXIT, b"worker")
        # The app's shell reaps its worker, so the kernel (>= 6.15) has the status for kqd even
        # though kqd runs as another uid without ptrace rights.
        assert ev.data == 7 << 8, f"exit status {ev.data}, expected exit(7)"
        # 2. the app writes its log: the host hears of it
        log_fd = kq.open("/shared/app.log")
        kq.control([kevent(log_fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, KQ_NOTE_WRITE)], 0)
        _write_fifo(pod.shared / "write")
        (ev,) = kq.control(None, 1, BOUND)
        assert ev.ident == log_fd and ev.fflags & KQ_NOTE_WRITE

    # 3. the app starts listening: kqctl wait-port, from the pod's network, returns
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kqclient.kqctl",
            "--target",
            pod.target,
            "wait-port",
            "-t",
            str(BOUND),
            "127.0.0.1:8080",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    _write_fifo(pod.shared / "listen")
    out, _ = waiter.communicate(timeout=BOUND)
    assert waiter.returncode == 0 and "127.0.0.1:8080 is available" in out

    # 4. SIGTERM: kqd shuts down cleanly and removes its socket. (The sidecar is stopped
    # first, as Kubernetes stops a native sidecar after the app: stopping the pod's infra
    # container first would SIGKILL everything in the shared PID namespace.)
    podman("kill", "--signal", "TERM", f"{pod.name}-kqd")
    status = podman("wait", f"{pod.name}-kqd", timeout=BOUND).stdout.strip()
    assert status == "0", f"kqd exit status {status} after SIGTERM"
    assert not pod.socket.exists(), "kqd removed its socket on SIGTERM"
