"""``kqd serve``'s log: one line per event worth logging, on stderr, as text or JSON Lines.

``--log-format text`` (the default) is for people: ``TIME LEVEL MESSAGE`` and the record's
structured fields as ``key=value``. ``--log-format json`` is for log pipelines: one JSON object
per line with stable keys,

- ``ts``: the time, RFC 3339 in UTC with milliseconds ("2026-01-31T12:00:00.123Z");
- ``level``: "debug", "info", "warning", "error" or "critical";
- ``logger``: "kqd.daemon" (the daemon), "kqd.audit" (every Open, OpenPeerFd, OpenConnection,
  refused knote and refused admin call), or a library's logger ("grpc...", "asyncio");
- ``msg``: the message, as the text format shows it;

plus the structured fields a line carries (given as ``extra={...}`` where it is logged: the
listening addresses at start, say), and ``exc`` with the traceback when there is one: a
traceback never spans lines in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
# What every LogRecord has: anything else in a record's __dict__ came as ``extra``.
_STANDARD = {
    *vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)),
    "message",
    "asctime",
    "taskName",
}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of *record* (its ``extra``), in the order given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """A record as one JSON object (see the module docstring for its keys)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry.setdefault("exc", self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL MESSAGE key=value ...``: the record's fields after its message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = fields(record)
        if not extra:
            return line
        pairs = " ".join(f"{key}={_text(value)}" for key, value in extra.items())
        head, newline, rest = line.partition("\n")  # a traceback stays below the first line
        return f"{head} {pairs}{newline}{rest}"


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    text = str(value)
    return json.dumps(text) if not text or any(c.isspace() or c in '"=' for c in text) else text


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send every log line (kqd's and its libraries') to stderr at *level*, in *fmt*."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # gRPC's Python layer logs a line per call at debug: never below info, so that kqd's own
    # debug lines stay readable.
    grpc_level = max(logging.INFO, root.level)
    logging.getLogger("grpc").setLevel(grpc_level)
