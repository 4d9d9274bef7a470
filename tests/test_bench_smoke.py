"""The benchmarks run (how fast is for `python -m bench`, not for tests), and their timing cannot
be fooled by a waiter that returns before the event."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from bench import waiting

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = [
    "### Process exit -> notified",
    "### File change -> notified",
    "### Port connectable -> notified",
    "### Waiting command started after the exit",
    "### Wake-up cost vs registrations",
    "### Wake-up while another client registers",
    "### Idle CPU",
    "### Daemon memory per knote",
    "### Streaming throughput",
    "### Daemon start -> a client knows it serves",
    "### Targets",
]


@pytest.mark.parametrize(
    ("name", "expected", "report"),
    [("scaling", ["select.poll"], "scaling.md"), ("all", SECTIONS, "report.md")],
)
def test_benchmark_runs_quick(tmp_path: Path, name: str, expected: list[str], report: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    written = (tmp_path / report).read_text()
    for text in expected:
        assert text in written, text


def test_state_benchmark_runs_quick() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "state", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "state costs" in result.stdout and "### Restart after kill -9" in result.stdout


def test_a_command_that_ends_before_the_event_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="ended before it was ready"):
        waiting.command(["true"])


def test_a_thread_that_returns_before_the_event_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="ended before it was ready"):
        waiting.in_thread(lambda: True)


def test_a_trial_starts_only_once_the_process_to_wait_for_is_blocked() -> None:
    child = waiting.exit_child()
    try:
        assert Path(f"/proc/{child.pid}/wchan").read_text().endswith("pipe_read")
    finally:
        waiting.reap(child)


def test_one_trial_times_an_exit_from_the_waiting_thread() -> None:
    def arm() -> waiting.Armed:
        child = waiting.exit_child()
        pidfd = os.pidfd_open(child.pid)
        waiter = waiting.in_thread(lambda: select.select([pidfd], [], [], 5)[0])

        def close() -> None:
            os.close(pidfd)
            waiting.reap(child)

        return waiting.Armed(lambda: waiting.release(child), waiter, close)

    assert 0 < waiting.time_one(arm, idle=0.01) < 1e9
