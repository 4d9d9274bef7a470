"""kqctl, run as a user would run it, against the real daemon."""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import IO

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
    assert child.stdin is not None
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
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: kqctl watch ")
    assert "unknown note 'bogus'" in result.stderr and result.stdout == ""


def test_watch_missing_path_is_named_once_with_the_reason(daemon_target, tmp_path) -> None:
    path = tmp_path / "missing"
    result = kqctl(daemon_target, "watch", str(path))
    assert result.returncode == 1
    assert result.stderr == f"kqctl: {path}: No such file or directory\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["watch", "-n", "", "."],
        ["watch", "-n", ",", "."],
        ["watch", "-c", "-1", "."],
        ["watch", "-c", "many", "."],
        ["pwait", "-t", "nan", "1"],
        ["pwait", "-t", "-1", "1"],
        ["pwait", "not-a-pid"],
        ["wait-port", "-t", "soon", "127.0.0.1:1"],
        ["health", "-t", "inf"],
        ["-w", "xml", "health"],
        ["no-such-command"],
    ],
    ids=" ".join,
)
def test_bad_values_are_usage_errors(daemon_target, args: list[str]) -> None:
    result = kqctl(daemon_target, *args)
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: kqctl") and ": error: " in result.stderr
    assert result.stdout == ""


def test_no_command_prints_the_usage_with_every_command(daemon_target) -> None:
    result = subprocess.run(
        KQCTL, capture_output=True, text=True, timeout=WAIT_BOUND, env=target_env(daemon_target)
    )
    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: kqctl ")
    assert "command_name" not in result.stderr
    listing = result.stderr.split("\ncommands:\n", 1)[-1].split("\n\n", 1)[0]
    listed = {line.split()[0] for line in listing.splitlines()}
    assert listed == {"pwait", "watch", "wait-port", "health", "stats", "queues"}, result.stderr
    assert result.stdout == ""


def readline_within(stream: IO[str], bound: float = WAIT_BOUND) -> str:
    """The next line of *stream*, failing the test if none comes within *bound* seconds."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    try:
        return lines.get(timeout=bound)
    except queue.Empty:
        pytest.fail(f"no line from kqctl within {bound}s")


def target_env(target: str) -> dict[str, str]:
    """This environment with ``KQD_TARGET`` naming *target*."""
    return {**os.environ, "KQD_TARGET": target}


def failure_record(result: subprocess.CompletedProcess) -> dict:
    """The one failure record of a ``-w json`` run: every stdout line must be a JSON object,
    exactly one of them with the stable failure keys ``error`` (text) and ``errno`` (int or
    null), and the human message must be on stderr too."""
    records = []
    for line in result.stdout.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"stdout line is not JSON: {line!r} (stdout {result.stdout!r})")
    failures = [record for record in records if "error" in record]
    assert len(failures) == 1, f"want one failure record, got {records} (stderr {result.stderr!r})"
    failure = failures[0]
    assert isinstance(failure["error"], str) and failure["error"], failure
    assert "errno" in failure and (failure["errno"] is None or isinstance(failure["errno"], int))
    assert result.stderr.strip(), "the human message must still go to stderr"
    return failure


def test_json_missing_pid_is_a_record(daemon_target) -> None:
    child = subprocess.Popen(["true"])
    child.wait(WAIT_BOUND)
    result = kqctl(daemon_target, "-w", "json", "pwait", str(child.pid))
    assert result.returncode == 1
    failure = failure_record(result)
    assert failure == {
        "pid": child.pid,
        "error": f"{child.pid}: No such process",
        "errno": errno.ESRCH,
    }
    assert result.stderr == f"kqctl: {failure['error']}\n"


def test_json_missing_path_is_a_record(daemon_target, tmp_path) -> None:
    path = tmp_path / "missing"
    result = kqctl(daemon_target, "-w", "json", "watch", str(path))
    assert result.returncode == 1
    failure = failure_record(result)
    assert failure == {
        "path": str(path),
        "error": f"{path}: No such file or directory",
        "errno": errno.ENOENT,
    }
    assert result.stderr == f"kqctl: {failure['error']}\n"


def test_json_pwait_timeout_is_a_record(daemon_target) -> None:
    child = sleeper()
    try:
        result = kqctl(daemon_target, "-w", "json", "pwait", "-t", "0.2", str(child.pid))
    finally:
        child.kill()
        child.wait(WAIT_BOUND)
    assert result.returncode == 124
    failure = failure_record(result)
    assert failure["pid"] == child.pid and failure["running"] is True
    assert failure["errno"] == errno.ETIMEDOUT and "timeout" in result.stderr


def test_json_wait_port_timeout_is_a_record(daemon_target) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: refused
        address = f"127.0.0.1:{probe.getsockname()[1]}"
        result = kqctl(daemon_target, "-w", "json", "wait-port", "-t", "0.3", address)
    assert result.returncode == 124
    failure = failure_record(result)
    assert failure["address"] == address and failure["errno"] == errno.ETIMEDOUT
    assert result.stderr == f"kqctl: {failure['error']}\n"


def test_json_failed_command_after_wait_port_is_a_record(daemon_target, tmp_path) -> None:
    missing = str(tmp_path / "no-such-program")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        result = kqctl(daemon_target, "-w", "json", "wait-port", "-t", "5", address, "--", missing)
    assert result.returncode == 1
    failure = failure_record(result)
    assert failure["command"] == [missing] and failure["errno"] == errno.ENOENT


@pytest.mark.parametrize("command", [["health"], ["pwait", "1"]], ids=" ".join)
def test_json_unreachable_daemon_is_a_record(tmp_path, command: list[str]) -> None:
    target = f"unix://{tmp_path}/none.sock"
    result = kqctl(target, "-w", "json", *command)
    assert result.returncode == 69
    failure = failure_record(result)
    assert failure["target"] == target and failure["errno"] is None


@pytest.mark.parametrize(
    "args", [["pwait", "not-a-pid"], ["watch", "-n", "bogus", "."], []], ids=" ".join
)
def test_json_usage_error_is_a_record(daemon_target, args: list[str]) -> None:
    result = kqctl(daemon_target, "-w", "json", *args)
    assert result.returncode == 2, result
    failure = failure_record(result)
    assert failure["errno"] is None and failure["usage"].startswith("usage: kqctl")
    assert result.stderr.startswith("usage: kqctl")


def test_interrupt_is_130_and_a_json_record(daemon_target, tmp_path) -> None:
    path = tmp_path / "quiet.log"
    path.write_text("")
    proc = subprocess.Popen(
        [*KQCTL, "--target", daemon_target, "-w", "json", "watch", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "watching 1 path" in readline_within(proc.stderr)  # now waiting in the stream
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_BOUND)
    finally:
        proc.kill()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert result.returncode == 130, result
    assert failure_record(result) == {"error": "interrupted", "errno": errno.EINTR}


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
