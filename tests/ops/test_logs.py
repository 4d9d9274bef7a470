"""``kqd serve --log-format``: JSON Lines that parse line by line with stable keys, text with the
structured fields, and no routine line at info level for a kqctl run."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import kqclient
import pytest

from kqd.logs import JsonFormatter, TextFormatter
from tests.conftest import WAIT_BOUND, sleeper, start_daemon
from tests.ops.conftest import kqctl

# What a daemon logs at info about its own life (start, stop), not about its callers.
LIFECYCLE = ("kqd serving on", "metrics on", "restored in", "shutting down", "kqd stopped")


def stopped_log(daemon) -> list[str]:
    assert daemon.stop() == 0
    return daemon.process.stderr.read().splitlines()


def test_json_log_parses_line_by_line(tmp_path: Path) -> None:
    daemon = start_daemon(
        tmp_path,
        "--log-format",
        "json",
        "--metrics-listen",
        "0",
        log_level="debug",
    )
    with kqclient.connect(daemon.target) as client:
        kq = client.kqueue()
        kq.open(str(Path(__file__).resolve()))  # an audit line
        with pytest.raises(FileNotFoundError):
            kq.open(str(tmp_path / "missing"))  # another, refused
        kq.close()
    lines = stopped_log(daemon)
    records = [json.loads(line) for line in lines]  # every line, or this fails
    assert len(records) >= 4
    for record in records:
        assert {"ts", "level", "logger", "msg"} <= record.keys(), record
        assert record["ts"].endswith("Z") and record["level"] in ("debug", "info", "warning")
    serving = next(r for r in records if r["msg"].startswith("kqd serving on"))
    assert serving["listen"] == [daemon.target] and serving["lease"] == 60.0
    assert any(r["msg"].startswith("metrics on") and r["metrics"] for r in records)
    audit = [r for r in records if r["logger"] == "kqd.audit"]
    assert len(audit) == 2 and all("uid:0 Open" in r["msg"] for r in audit)
    assert records[-1]["msg"] == "kqd stopped"


def test_a_kqctl_run_logs_nothing_at_info(tmp_path: Path) -> None:
    """pwait, health, stats and queues: nothing routine at info, only the daemon's start and
    stop."""
    daemon = start_daemon(tmp_path, "--metrics-listen", "0", log_level="info")
    child = sleeper()
    pwait = subprocess.Popen(
        [sys.executable, "-m", "kqclient.kqctl", "--target", daemon.target, "pwait", str(child.pid)]
    )
    assert child.stdin is not None
    threading.Timer(0.3, child.stdin.close).start()
    assert pwait.wait(WAIT_BOUND) == 0
    child.wait(WAIT_BOUND)
    for command in ("health", "stats", "queues"):
        assert kqctl(daemon.target, command).returncode == 0
    lines = stopped_log(daemon)
    assert [line for line in lines if not any(text in line for text in LIFECYCLE)] == []


def test_text_format_appends_fields() -> None:
    import logging

    record = logging.LogRecord("kqd.daemon", logging.INFO, __file__, 1, "serving %s", ("x",), None)
    record.listen = ["unix:///run/kqd/kqd.sock", "127.0.0.1:9000"]
    record.note = "two words"
    line = TextFormatter().format(record)
    assert line.endswith(
        'INFO serving x listen=unix:///run/kqd/kqd.sock,127.0.0.1:9000 note="two words"'
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "serving x" and entry["listen"][1] == "127.0.0.1:9000"
    assert entry["level"] == "info" and entry["logger"] == "kqd.daemon"


def test_json_traceback_stays_on_one_line() -> None:
    import logging

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "kqd.daemon", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exc"]
