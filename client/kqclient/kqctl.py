"""kqctl: the kqd command line.

Data goes to stdout (text, or JSON Lines with ``-w json``), diagnostics to stderr. Exit codes:
0 success; 1 a command-level failure (a pid that does not exist, a path that cannot be opened,
a daemon that is not SERVING); 2 usage; 69 the daemon cannot be reached; 124 timeout;
130 interrupted. ``--target`` (or ``KQD_TARGET``) names the daemon, default its standard socket.

Every failure prints a human line ``kqctl: MESSAGE`` on stderr and, with ``-w json``, also one
JSON Lines record on stdout (one per pid when several pids fail). A failure record always has
the keys ``error`` (that MESSAGE; for a usage error ``PROG: MESSAGE``) and ``errno`` (an int, or
null where no errno applies); it also names what failed where one thing did (``pid``, ``path``,
``address``, ``command``, ``target``), and a usage error carries its ``usage`` line.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import kqclient
from kqclient.errors import translate
from kqclient.target import TARGET_ENV, TLS_ENV, open_channel, resolve_target
from kqd.core.constants import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_EV_ERROR,
    KQ_EV_ONESHOT,
    KQ_FILTER_PROC,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_EXIT,
    NOTE_NAMES,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 69, 124, 130
# wait-port, Unix sockets: a refused connect is asked again after this pause (no kernel event says
# "someone started listening"); host:port waits are retried by the daemon itself.
RETRY_INTERVAL = 0.002
DAEMON_RETRY = 3600.0  # seconds the daemon retries a host:port per call, when there is no -t
QUEUE_LEASE = 10.0

VNODE_NOTES = {
    name.removeprefix("KQ_NOTE_").lower(): bit for bit, name in NOTE_NAMES[KQ_FILTER_VNODE].items()
}
DEFAULT_WATCH_NOTES = "delete,write,extend,attrib,link,rename,revoke"

# (name, one-line help) of every command, in the order usage messages list them.
COMMANDS = [
    ("pwait", "wait for processes to exit (FreeBSD pwait)"),
    ("watch", "print file and directory changes"),
    ("wait-port", "wait until addresses accept connections"),
    ("health", "exit 0 when the daemon is SERVING"),
    ("stats", "print what the daemon holds (privileged callers)"),
    ("queues", "list the daemon's queues, each as a short hash (privileged callers)"),
]


class UsageError(Exception):
    """A command line kqctl cannot run (exit 2): *message*, the *usage* line of *prog*, and
    optional *details* printed after them."""

    def __init__(self, prog: str, usage: str, message: str, details: str = "") -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage.strip()
        self.message = message
        self.details = details


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError instead of exiting, so that ``main``
    reports them like every other failure (and in JSON with ``-w json``). Subparsers made by
    ``add_subparsers`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, self.format_usage(), message)


def json_line(record: dict[str, Any]) -> str:
    """*record* as one JSON Lines line. json is imported on the first use: text output, the
    common case, does not pay for it at start-up."""
    import json

    return json.dumps(record)


class Output:
    """Where results and failures go: records as text lines or JSON Lines (``-w``) on stdout,
    failure messages on stderr."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def emit(self, text: str, record: dict[str, Any]) -> None:
        """One result: *text* in text mode, *record* as one JSON line in json mode."""
        print(json_line(record) if self.json else text, flush=True)

    def fail(self, message: str, err: int | None = None, **subject: Any) -> None:
        """One failure: ``kqctl: MESSAGE`` on stderr and, in json mode, the record
        ``{**subject, "error": MESSAGE, "errno": ERR}`` on stdout."""
        print(f"kqctl: {message}", file=sys.stderr, flush=True)
        if self.json:
            print(json_line({**subject, "error": message, "errno": err}), flush=True)


def warn(message: str) -> None:
    """A diagnostic that is not a failure (stderr only)."""
    print(f"kqctl: {message}", file=sys.stderr, flush=True)


def describe_status(status: int) -> tuple[str, dict[str, Any]]:
    """A wait(2) status in words and as a record."""
    if status < 0:
        return "exit status unknown", {"status": None}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig}", {"status": status, "signal": sig}
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}", {"status": status, "exit_code": code}


def describe_error(exc: BaseException) -> str:
    """An exception as the reason a user reads: an OSError's strerror (not ``[Errno N] ...``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def cmd_pwait(args: argparse.Namespace, kq: kqclient.RemoteKqueue, out: Output) -> int:
    """FreeBSD pwait(1): wait for all (or, with -o, any) of the pids, children or not.

    The first Kevent call both registers the pids and waits, as kevent(2) does: a pid that
    cannot be watched comes back at once as a KQ_EV_ERROR entry (the call then returns without
    waiting, and the next one waits for the others)."""
    changes: list[kqclient.kevent] | None = [
        kqclient.kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for pid in args.pids
    ]
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    failed = False
    waiting = set(args.pids)
    while waiting:
        # Room for one entry per change: every failure is reported, none raised.
        room = len(changes) if changes else len(waiting)
        events = kq.control(changes, room, remaining(deadline))
        changes = None
        if not events:
            for pid in sorted(waiting):
                out.emit(
                    f"{pid}: still running",
                    {
                        "pid": pid,
                        "running": True,
                        "error": f"{pid}: still running after {args.timeout}s",
                        "errno": errno.ETIMEDOUT,
                    },
                )
            warn(f"timeout after {args.timeout}s")
            return EXIT_TIMEOUT
        exited = False
        for ev in events:
            waiting.discard(ev.ident)
            if ev.flags & KQ_EV_ERROR:
                out.fail(f"{ev.ident}: {os.strerror(ev.data)}", ev.data, pid=ev.ident)
                failed = True
                continue
            exited = True
            if args.verbose:
                text, record = describe_status(ev.data)
                out.emit(f"{ev.ident}: {text}", {"pid": ev.ident, **record})
        if args.any and exited:
            break
    return EXIT_FAILURE if failed else EXIT_OK


def parse_notes(spec: str) -> int:
    """``-n``: comma-separated VNODE note names (any case) as a bit mask."""
    bits = 0
    for name in filter(None, (part.strip().lower() for part in spec.split(","))):
        if name not in VNODE_NOTES:
            raise argparse.ArgumentTypeError(
                f"unknown note {name!r}; choose from {', '.join(VNODE_NOTES)}"
            )
        bits |= VNODE_NOTES[name]
    if not bits:
        raise argparse.ArgumentTypeError(f"no note given; choose from {', '.join(VNODE_NOTES)}")
    return bits


def parse_seconds(text: str) -> float:
    """``-t``: a finite number of seconds, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return seconds


def parse_count(text: str) -> int:
    """``-c``: a whole number, 0 or more (0: no limit)."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (a whole number, 0 or more)")
    return count


def cmd_watch(args: argparse.Namespace, kq: kqclient.RemoteKqueue, out: Output) -> int:
    """One line per VNODE event on the paths, until COUNT events or an interrupt."""
    paths: dict[int, str] = {}
    for path in args.paths:
        absolute = os.path.abspath(path)
        try:
            fd = kq.open(absolute)
        except OSError as exc:
            # The daemon's message names the path already: say it once, with the reason.
            reason = os.strerror(exc.errno) if exc.errno else describe_error(exc)
            out.fail(f"{absolute}: {reason}", exc.errno, path=absolute)
            return EXIT_FAILURE
        paths[fd] = absolute
    kq.control(
        [kqclient.kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, args.notes) for fd in paths],
        0,
    )
    warn(f"watching {len(paths)} path(s)")  # like inotifywait's "Watches established."
    for seen, ev in enumerate(kq.stream(), start=1):
        names = [name for name, bit in VNODE_NOTES.items() if ev.fflags & bit]
        path = paths.get(ev.ident, str(ev.ident))
        out.emit(
            f"{path} {','.join(names)}",
            {"path": path, "notes": names, "fflags": ev.fflags, "sequence": kq.last_sequence},
        )
        if args.count and seen >= args.count:
            return EXIT_OK
    return EXIT_OK


def _wait_one_port(kq: kqclient.RemoteKqueue, address: str, deadline: float | None) -> bool:
    """Wait until *address* accepts a connection from the daemon. For host:port the daemon
    itself tries again while refused (one call for the whole wait); a Unix socket answers at
    once, so kqctl asks again every RETRY_INTERVAL."""
    unix = address.startswith("unix:")
    while True:
        wait = remaining(deadline)
        try:
            if unix:
                fd = kq.open_connection(address)
            else:
                fd = kq.open_connection(address, retry_for=DAEMON_RETRY if wait is None else wait)
        except (ConnectionRefusedError, FileNotFoundError, BlockingIOError):
            pass  # a Unix socket answers at once: nobody listens there (yet)
        else:
            change = kqclient.kevent(fd, KQ_FILTER_WRITE, KQ_EV_ADD | KQ_EV_ONESHOT)
            events = kq.control([change], 1, remaining(deadline))
            if events and not events[0].flags & KQ_EV_EOF:
                return True  # connected: the queue's lease closes it
            kq.close_fd(fd)
        wait = remaining(deadline)
        if wait is not None and wait <= 0:
            return False
        time.sleep(RETRY_INTERVAL if wait is None else min(RETRY_INTERVAL, wait))


def cmd_wait_port(args: argparse.Namespace, kq: kqclient.RemoteKqueue, out: Output) -> int:
    """wait-for-it, from the daemon's side of the network: then run CMD, if given."""
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    for address in args.addresses:
        started = time.monotonic()
        if not _wait_one_port(kq, address, deadline):
            out.fail(
                f"timeout after {args.timeout}s waiting for {address}",
                errno.ETIMEDOUT,
                address=address,
            )
            return EXIT_TIMEOUT
        waited = time.monotonic() - started
        out.emit(
            f"{address} is available after {waited:.3f}s",
            {"address": address, "available": True, "seconds": round(waited, 6)},
        )
    if args.command:
        sys.stdout.flush()
        try:
            os.execvp(args.command[0], args.command)
        except OSError as exc:
            out.fail(f"{args.command[0]}: {describe_error(exc)}", exc.errno, command=args.command)
            return EXIT_FAILURE
    return EXIT_OK


def tls_files(args: argparse.Namespace) -> kqclient.TlsClientFiles | None:
    """TLS files from --tls-ca/--tls-cert/--tls-key (all three), else from the environment."""
    given = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(given) and not all(given):
        raise ValueError("TLS needs all of --tls-ca, --tls-cert and --tls-key")
    return kqclient.TlsClientFiles(*given) if all(given) else kqclient.TlsClientFiles.from_env()


def cmd_health(args: argparse.Namespace, out: Output) -> int:
    """Exit 0 when the daemon answers SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = resolve_target(args.target)
    with open_channel(target, tls_files(args)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=args.timeout)
        except grpc.RpcError as error:
            details = error.details()  # type: ignore[attr-defined]
            out.fail(f"cannot reach kqd at {target}: {details}", None, target=target)
            return EXIT_UNAVAILABLE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    record: dict[str, Any] = {"target": target, "status": status}
    if not serving:  # the status line is data; the failure also goes to stderr
        message = f"kqd at {target} is {status}"
        warn(message)
        record |= {"error": message, "errno": None}
    out.emit(status, record)
    return EXIT_OK if serving else EXIT_FAILURE


def _admin_call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """Call AdminService *method*; a failed call raises what kqclient raises for it
    (PermissionError for a caller that is not privileged, DaemonUnavailable, ...)."""
    import grpc

    from kqd.v1 import admin_pb2_grpc

    target = resolve_target(args.target)
    with open_channel(target, tls_files(args)) as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=args.timeout)
        except grpc.RpcError as error:
            raise translate(error, target) from None


def _seconds(duration: Any) -> float:
    return float(duration.seconds + duration.nanos / 1e9)


def _by_filter(counts: Any) -> dict[str, int]:
    return {item.filter: item.count for item in counts}


def _filter_text(counts: dict[str, int]) -> str:
    """``6 (proc 5, user 1)``: the total, then the filters that have any."""
    parts = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    total = sum(counts.values())
    return f"{total} ({parts})" if parts else str(total)


def stats_record(response: Any) -> dict[str, Any]:
    """A GetStatsResponse as the ``-w json`` record of ``kqctl stats``."""
    d, log = response.descriptors, response.resume_log
    record: dict[str, Any] = {
        "version": response.version,
        "uptime_seconds": round(_seconds(response.uptime), 3),
        "queues": response.queues,
        "knotes": _by_filter(response.knotes),
        "wait_streams": response.wait_streams,
        "descriptors": {
            "open": d.open,
            "limit": d.limit,
            "for_callers": d.for_callers,
            "for_callers_limit": d.for_callers_limit,
        },
        "resume_log": {"events": log.events, "bytes": log.bytes},
        "stuck_streams_closed": response.stuck_streams_closed,
        "inotify_overflows": response.inotify_overflows,
        "proc_connector_drops": response.proc_connector_drops,
        "delivery": None,
        "principals": [
            {
                "principal": p.principal,
                "queues": p.queues,
                "knotes": p.knotes,
                "descriptors": p.descriptors,
                "wait_streams": p.wait_streams,
                "udata_bytes": p.udata_bytes,
                "timers": p.timers,
                "daemon_descriptors": p.daemon_descriptors,
            }
            for p in response.principals
        ],
    }
    if response.HasField("delivery"):
        counters = response.delivery
        record["delivery"] = {
            "events_delivered": _by_filter(counters.events_delivered),
            "latency_count": counters.latency_count,
            "latency_sum_seconds": counters.latency_sum_seconds,
            "resumes_refused": counters.resumes_refused,
        }
    return record


def stats_text(record: dict[str, Any]) -> str:
    """``kqctl stats`` in text: one ``name  value`` line each, then the principals."""
    d, log = record["descriptors"], record["resume_log"]
    rows = [
        ("version", record["version"]),
        ("uptime", f"{record['uptime_seconds']:.1f}s"),
        ("queues", record["queues"]),
        ("knotes", _filter_text(record["knotes"])),
        ("wait streams", record["wait_streams"]),
        ("descriptors", f"{d['open']} open, limit {d['limit']}"),
        ("for callers", f"{d['for_callers']}, limit {d['for_callers_limit']}"),
        ("resume log", f"{log['events']} events, {log['bytes']} bytes"),
        ("stuck streams closed", record["stuck_streams_closed"]),
        ("inotify overflows", record["inotify_overflows"]),
        ("proc connector drops", record["proc_connector_drops"]),
    ]
    counters = record["delivery"]
    if counters is None:
        rows.append(("events delivered", "not counted (kqd serve without --metrics-listen)"))
    else:
        count = counters["latency_count"]
        mean = counters["latency_sum_seconds"] / count * 1e3 if count else 0.0
        rows += [
            ("events delivered", _filter_text(counters["events_delivered"])),
            ("delivery latency", f"mean {mean:.3f} ms over {count} events"),
            ("resumes refused", counters["resumes_refused"]),
        ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for p in record["principals"]:
        lines.append(
            f"principal {p['principal']}: {p['queues']} queues, {p['knotes']} knotes, "
            f"{p['descriptors']} descriptors, {p['wait_streams']} streams, {p['timers']} "
            f"timers, {p['udata_bytes']} udata bytes, {p['daemon_descriptors']} daemon "
            "descriptors"
        )
    return "\n".join(lines)


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    """What the daemon holds: the numbers of its metrics, and each principal's."""
    from kqd.v1 import admin_pb2

    record = stats_record(_admin_call(args, "GetStats", admin_pb2.GetStatsRequest()))
    out.emit(stats_text(record), record)
    return EXIT_OK


QUEUE_COLUMNS = ("QUEUE", "OWNER", "KNOTES", "STREAMS", "CALLS", "LAST_SEQ", "FDS", "LEASE_LEFT")


def cmd_queues(args: argparse.Namespace, out: Output) -> int:
    """Every queue (or one owner's): a short hash of its id, never the id."""
    from kqd.v1 import admin_pb2

    request = admin_pb2.ListQueuesRequest(owner=args.owner or "")
    response = _admin_call(args, "ListQueues", request)
    records, rows = [], []
    for q in response.queues:
        left = round(_seconds(q.lease_left), 3) if q.HasField("lease_left") else None
        knotes = _by_filter(q.knotes)
        records.append(
            {
                "queue": q.queue_hash,
                "owner": q.owner,
                "knotes": knotes,
                "wait_streams": q.wait_streams,
                "calls": q.calls,
                "last_sequence": q.last_sequence,
                "descriptors": q.descriptors,
                "lease_seconds": round(_seconds(q.lease), 3),
                "lease_left_seconds": left,
            }
        )
        rows.append(
            (
                q.queue_hash,
                q.owner,
                ",".join(f"{name}={n}" for name, n in knotes.items()) or "-",
                str(q.wait_streams),
                str(q.calls),
                str(q.last_sequence),
                str(q.descriptors),
                "in use" if left is None else f"{left:.1f}s",
            )
        )
    if out.json:
        for record in records:
            out.emit("", record)
        return EXIT_OK
    table = [QUEUE_COLUMNS, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(QUEUE_COLUMNS))]
    for row in table:
        line = "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True))
        out.emit(line.rstrip(), {})
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kqctl",
        description="Talk to a kqd daemon.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage, 69 daemon unreachable, 124 timeout, "
        "130 interrupted",
    )
    parser.add_argument(
        "--target",
        default=None,
        help=f"daemon address: unix:///path or host:port (env {TARGET_ENV})",
    )
    for flag, env, what in zip(
        ("--tls-ca", "--tls-cert", "--tls-key"),
        TLS_ENV,
        ("CA that signed the daemon's certificate", "client certificate", "client key"),
        strict=True,
    ):
        parser.add_argument(flag, type=Path, help=f"TLS: PEM {what} (env {env})")
    parser.add_argument(
        "-w",
        "--write-out",
        choices=["text", "json"],
        default="text",
        help="output format: text or JSON Lines",
    )
    parser.set_defaults(direct=None)  # commands that need no queue: (args, out) -> exit code
    sub = parser.add_subparsers(dest="command_name", title="commands")
    helps = dict(COMMANDS)

    pwait = sub.add_parser("pwait", help=helps["pwait"])
    pwait.add_argument(
        "-t", "--timeout", type=parse_seconds, help="give up after SECONDS (exit 124)"
    )
    pwait.add_argument("-v", "--verbose", action="store_true", help="print each exit status")
    pwait.add_argument("-o", "--any", action="store_true", help="return when any pid exits")
    pwait.add_argument("pids", metavar="PID", type=int, nargs="+")
    pwait.set_defaults(run=cmd_pwait)

    watch = sub.add_parser("watch", help=helps["watch"])
    watch.add_argument(
        "-n",
        "--notes",
        type=parse_notes,
        default=DEFAULT_WATCH_NOTES,
        help=f"comma-separated notes (default {DEFAULT_WATCH_NOTES}; also "
        "open,close,close_write,read)",
    )
    watch.add_argument("-c", "--count", type=parse_count, default=0, help="stop after COUNT events")
    watch.add_argument("paths", metavar="PATH", nargs="+")
    watch.set_defaults(run=cmd_watch)

    port = sub.add_parser("wait-port", help=helps["wait-port"])
    port.add_argument(
        "-t", "--timeout", type=parse_seconds, help="give up after SECONDS (exit 124)"
    )
    port.add_argument("addresses", metavar="ADDR", nargs="+", help="host:port or unix:/path")
    port.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS: run on success")
    port.set_defaults(run=cmd_wait_port)

    health = sub.add_parser("health", help=helps["health"])
    health.add_argument(
        "-t", "--timeout", type=parse_seconds, default=3.0, help="seconds (default 3)"
    )
    health.set_defaults(direct=cmd_health)

    stats = sub.add_parser("stats", help=helps["stats"])
    stats.add_argument(
        "-t", "--timeout", type=parse_seconds, default=5.0, help="seconds (default 5)"
    )
    stats.set_defaults(direct=cmd_stats)

    queues = sub.add_parser("queues", help=helps["queues"])
    queues.add_argument("--owner", metavar="PRINCIPAL", help='only its queues ("uid:1000", ...)')
    queues.add_argument(
        "-t", "--timeout", type=parse_seconds, default=5.0, help="seconds (default 5)"
    )
    queues.set_defaults(direct=cmd_queues)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def _command_listing() -> str:
    width = max(len(name) for name, _ in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS]
    return "\n".join(["", "commands:", *lines, "", "`kqctl COMMAND -h` shows a command's options"])


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    """The parsed command line (``--`` and what follows it in ``command``); UsageError when
    it cannot run, including when no command is given."""
    own, command = _split_command(argv)
    parser = _parser()
    args = parser.parse_args(own)
    if args.command_name is None:
        raise UsageError(
            parser.prog, parser.format_usage(), "a command is required", _command_listing()
        )
    args.command = command
    return args


def _requested_format(argv: list[str]) -> str:
    """The ``-w`` format asked for, read leniently: a usage error is reported in it too."""
    pre = _Parser(add_help=False)
    pre.add_argument("-w", "--write-out", default="text")
    try:
        known, _ = pre.parse_known_args(_split_command(argv)[0])
    except UsageError:
        return "text"
    return str(known.write_out)


def report_usage_error(error: UsageError, out: Output) -> int:
    """argparse's usage report on stderr (and the record in json mode); the exit code 2."""
    print(error.usage, file=sys.stderr)
    print(f"{error.prog}: error: {error.message}", file=sys.stderr)
    if error.details:
        print(error.details, file=sys.stderr)
    sys.stderr.flush()
    if out.json:
        record = {"error": f"{error.prog}: {error.message}", "errno": None, "usage": error.usage}
        print(json_line(record), flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Run one kqctl command line; the exit code (see the module's docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_arguments(argv)
    except UsageError as error:
        return report_usage_error(error, Output(_requested_format(argv)))
    out = Output(args.write_out)
    signal.signal(signal.SIGINT, lambda *_: interrupted(out))
    try:
        if args.direct is not None:
            direct: Callable[[argparse.Namespace, Output], int] = args.direct
            return direct(args, out)
        run: Callable[[argparse.Namespace, kqclient.RemoteKqueue, Output], int] = args.run
        with kqclient.connect(args.target, tls=tls_files(args)) as client:
            # A short lease instead of CloseQueue: the daemon reclaims the queue by itself, and
            # kqctl returns as soon as it knows (scripts wait on its exit).
            return run(args, client.kqueue(lease=QUEUE_LEASE), out)
    except kqclient.DaemonUnavailable as exc:
        out.fail(str(exc), None, target=resolve_target(args.target))
        return EXIT_UNAVAILABLE
    except (OSError, ValueError, kqclient.KqdError) as exc:
        err = getattr(exc, "errno", None)
        out.fail(describe_error(exc), err if isinstance(err, int) else None)
        timed_out = isinstance(exc, TimeoutError) or err == errno.ETIMEDOUT
        return EXIT_TIMEOUT if timed_out else EXIT_FAILURE


def interrupted(out: Output) -> NoReturn:
    """Ctrl-C: say so and exit at once. Unwinding instead (KeyboardInterrupt) would leave a
    gRPC call half-interrupted, and closing its channel can then hang."""
    out.fail("interrupted", errno.EINTR)
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def console_main() -> NoReturn:
    """The ``kqctl`` command. Once the answer is out, exit at once: tearing down the
    interpreter and gRPC's threads would add tens of milliseconds to every pwait."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
