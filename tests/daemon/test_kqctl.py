"""kqctl, run as a user would run it, against the real daemon."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import WAIT_BOUND, sleeper

KQCTL = [sys.executable, "-m", "kqclient.kqctl"]


def kqctl(target: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KQCTL, "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=WAIT_BOUND * 2,
        **kwargs,
    )


def test_pwait_prints_exit_status(daemon_target) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"], stdin=subprocess.PIPE
    )
    proc = subprocess.Popen(
        [*KQCTL, "--target", daemon_target, "pwait", "-v", str(child.pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    threading.Timer(0.2, child.stdin.close).start()  # exit once kqctl is (very likely) waiting
    out, _ = proc.communicate(timeout=WAIT_BOUND)
    assert proc.returncode == 0
    assert out == f"{child.pid}: exited with status 3\n"
    child.wait(WAIT_BOUND)


def test_pwait_json_and_signal(daemon_target) -> None:
    child = sleeper()
    proc = subprocess.Popen(
        [*KQCTL, "--target", daemon_target, "-w", "json", "pwait", "-v", str(child.pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    threading.Timer(0.2, child.kill).start()
    out, _ = proc.communicate(timeout=WAIT_BOUND)
    assert json.loads(out) == {"pid": child.pid, "status": 9, "signal": 9}
    child.wait(WAIT_BOUND)


def test_pwait_timeout_is_124(daemon_target) -> None:
    child = sleeper()
    try:
        result = kqctl(daemon_target, "pwait", "-t", "0.2", str(child.pid))
        assert result.returncode == 124
    finally:
        child.kill()
        child.wait(WAIT_BOUND)


def test_pwait_any(daemon_target) -> None:
    stays, goes = sleeper(), sleeper()
    proc = subprocess.Popen(
        [*KQCTL, "--target", daemon_target, "pwait", "-o", "-v", str(stays.pid), str(goes.pid)],
        stdout=subprocess.PIPE,
        text=True,
    )
    threading.Timer(0.2, goes.kill).start()
    out, _ = proc.communicate(timeout=WAIT_BOUND)
    assert proc.returncode == 0 and out.startswith(f"{goes.pid}: killed by signal 9")
    stays.kill()
    for child in (stays, goes):
        child.wait(WAIT_BOUND)


def test_pwait_missing_pid_is_reported(daemon_target) -> None:
    child = subprocess.Popen(["true"])
    child.wait(WAIT_BOUND)
    result = kqctl(daemon_target, "pwait", str(child.pid))
    assert result.returncode == 1
    assert f"{child.pid}: No such process" in result.stderr and result.stdout == ""


def test_watch_prints_one_line_per_event(daemon_target, tmp_path) -> None:
    path = tmp_path / "app.log"
    path.write_text("")
    proc = subprocess.Popen(
        [*KQCTL, "--target", daemon_target, "-w", "json", "watch", "-c", "1", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert "watching 1 path" in proc.stderr.readline()
    with open(path, "a") as f:
        f.write("line\n")
    out, _ = proc.communicate(timeout=WAIT_BOUND)
    records = [json.loads(line) for line in out.splitlines()]
    assert proc.returncode == 0 and len(records) == 1
    assert records[0]["path"] == str(path) and records[0]["notes"] == ["write", "extend"]


def test_watch_unknown_note_is_a_usage_error(daemon_target, tmp_path) -> None:
    result = kqctl(daemon_target, "watch", "-n", "bogus", str(tmp_path))
    assert result.returncode != 0 and "unknown note 'bogus'" in result.stderr


def test_wait_port_success_runs_the_command(daemon_target) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        result = kqctl(daemon_target, "wait-port", "-t", "5", address, "--", "echo", "go")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "go"


def test_wait_port_waits_until_someone_listens(daemon_target) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{server.getsockname()[1]}"
        proc = subprocess.Popen(
            [*KQCTL, "--target", daemon_target, "wait-port", "-t", "5", address],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Timer(0.3, server.listen).start()
        out, _ = proc.communicate(timeout=WAIT_BOUND)
    assert proc.returncode == 0 and "is available" in out


def test_wait_port_timeout_is_124(daemon_target) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: refused
        result = kqctl(
            daemon_target, "wait-port", "-t", "0.3", f"127.0.0.1:{probe.getsockname()[1]}"
        )
    assert result.returncode == 124 and "timeout" in result.stderr


def test_health(daemon_target) -> None:
    result = kqctl(daemon_target, "health")
    assert (result.returncode, result.stdout) == (0, "SERVING\n")


def test_unreachable_daemon_is_69(tmp_path) -> None:
    target = f"unix://{tmp_path}/none.sock"
    assert kqctl(target, "health").returncode == 69
    result = kqctl(target, "pwait", "1")
    assert result.returncode == 69 and "kqd serve" in result.stderr


def test_target_from_environment(daemon_target) -> None:
    env = {**os.environ, "KQD_TARGET": daemon_target}
    result = subprocess.run(
        [*KQCTL, "health"], capture_output=True, text=True, env=env, timeout=WAIT_BOUND
    )
    assert result.returncode == 0


def test_installed_entry_point() -> None:
    exe = shutil.which("kqctl", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("kqctl is not installed next to this interpreter")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=WAIT_BOUND)
    assert result.returncode == 0 and "exit codes" in result.stdout
