"""kqctl: the kqd command line.

Data goes to stdout (text, or JSON Lines with ``-w json``), diagnostics to stderr. Exit codes:
0 success; 1 a command-level failure (a pid that does not exist, a path that cannot be opened,
a daemon that is not SERVING); 2 usage; 69 the daemon cannot be reached; 124 timeout;
130 interrupted. ``--target`` (or ``KQD_TARGET``) names the daemon, default its standard socket.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import kqclient
from kqclient.target import TARGET_ENV, resolve_target
from kqd.core.constants import (
    KQ_EV_ADD,
    KQ_EV_CLEAR,
    KQ_EV_EOF,
    KQ_EV_ONESHOT,
    KQ_EV_RECEIPT,
    KQ_FILTER_PROC,
    KQ_FILTER_VNODE,
    KQ_FILTER_WRITE,
    KQ_NOTE_EXIT,
    NOTE_NAMES,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_UNAVAILABLE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 69, 124, 130
# wait-port: a refused connect is retried after this pause (no kernel event says "someone
# started listening"); each try is one connect from the daemon and one round trip.
RETRY_INTERVAL = 0.002
QUEUE_LEASE = 10.0

VNODE_NOTES = {
    name.removeprefix("KQ_NOTE_").lower(): bit for bit, name in NOTE_NAMES[KQ_FILTER_VNODE].items()
}
DEFAULT_WATCH_NOTES = "delete,write,extend,attrib,link,rename,revoke"


class Output:
    """Writes records as text lines or JSON Lines (``-w``)."""

    def __init__(self, fmt: str) -> None:
        self.json = fmt == "json"

    def emit(self, text: str, record: dict[str, Any]) -> None:
        print(json.dumps(record) if self.json else text, flush=True)


def warn(message: str) -> None:
    print(f"kqctl: {message}", file=sys.stderr)


def describe_status(status: int) -> tuple[str, dict[str, Any]]:
    """A wait(2) status in words and as a record."""
    if status < 0:
        return "exit status unknown", {"status": None}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig}", {"status": status, "signal": sig}
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}", {"status": status, "exit_code": code}


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def cmd_pwait(args: argparse.Namespace, kq: kqclient.RemoteKqueue, out: Output) -> int:
    """FreeBSD pwait(1): wait for all (or, with -o, any) of the pids, children or not."""
    changes = [
        kqclient.kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD | KQ_EV_RECEIPT, KQ_NOTE_EXIT)
        for pid in args.pids
    ]
    failed = False
    waiting = set()
    for receipt in kq.control(changes, len(changes), 0):
        if receipt.data:
            warn(f"{receipt.ident}: {os.strerror(receipt.data)}")
            failed = True
        else:
            waiting.add(receipt.ident)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    while waiting:
        events = kq.control(None, len(waiting), remaining(deadline))
        if not events:
            for pid in sorted(waiting):
                out.emit(f"{pid}: still running", {"pid": pid, "running": True})
            return EXIT_TIMEOUT
        for ev in events:
            waiting.discard(ev.ident)
            if args.verbose:
                text, record = describe_status(ev.data)
                out.emit(f"{ev.ident}: {text}", {"pid": ev.ident, **record})
        if args.any:
            break
    return EXIT_FAILURE if failed else EXIT_OK


def _notes(spec: str) -> int:
    bits = 0
    for name in filter(None, (part.strip().lower() for part in spec.split(","))):
        if name not in VNODE_NOTES:
            raise SystemExit(
                f"kqctl watch: unknown note {name!r}; choose from {', '.join(VNODE_NOTES)}"
            )
        bits |= VNODE_NOTES[name]
    return bits


def cmd_watch(args: argparse.Namespace, kq: kqclient.RemoteKqueue, out: Output) -> int:
    """One line per VNODE event on the paths, until COUNT events or an interrupt."""
    notes = _notes(args.notes)
    paths: dict[int, str] = {}
    for path in args.paths:
        absolute = os.path.abspath(path)
        try:
            fd = kq.open(absolute)
        except OSError as exc:
            warn(f"{absolute}: {exc.strerror or exc}")
            return EXIT_FAILURE
        paths[fd] = absolute
    kq.control(
        [kqclient.kevent(fd, KQ_FILTER_VNODE, KQ_EV_ADD | KQ_EV_CLEAR, notes) for fd in paths], 0
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
    while True:
        fd = kq.open_connection(address)
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
            warn(f"timeout after {args.timeout}s waiting for {address}")
            return EXIT_TIMEOUT
        waited = time.monotonic() - started
        out.emit(
            f"{address} is available after {waited:.3f}s",
            {"address": address, "available": True, "seconds": round(waited, 6)},
        )
    if args.command:
        sys.stdout.flush()
        os.execvp(args.command[0], args.command)
    return EXIT_OK


def cmd_health(args: argparse.Namespace, out: Output) -> int:
    """Exit 0 when the daemon answers SERVING (for container health checks)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = resolve_target(args.target)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=args.timeout)
        except grpc.RpcError as error:
            warn(f"cannot reach kqd at {target}: {error.details()}")  # type: ignore[attr-defined]
            return EXIT_UNAVAILABLE
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    out.emit(status, {"target": target, "status": status})
    return EXIT_OK if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument(
        "-w",
        "--write-out",
        choices=["text", "json"],
        default="text",
        help="output format: text or JSON Lines",
    )
    sub = parser.add_subparsers(dest="command_name", required=True)

    pwait = sub.add_parser("pwait", help="wait for processes to exit (FreeBSD pwait)")
    pwait.add_argument("-t", "--timeout", type=float, help="give up after SECONDS (exit 124)")
    pwait.add_argument("-v", "--verbose", action="store_true", help="print each exit status")
    pwait.add_argument("-o", "--any", action="store_true", help="return when any pid exits")
    pwait.add_argument("pids", metavar="PID", type=int, nargs="+")
    pwait.set_defaults(run=cmd_pwait)

    watch = sub.add_parser("watch", help="print file and directory changes")
    watch.add_argument(
        "-n",
        "--notes",
        default=DEFAULT_WATCH_NOTES,
        help=f"comma-separated notes (default {DEFAULT_WATCH_NOTES}; also "
        "open,close,close_write,read)",
    )
    watch.add_argument("-c", "--count", type=int, default=0, help="stop after COUNT events")
    watch.add_argument("paths", metavar="PATH", nargs="+")
    watch.set_defaults(run=cmd_watch)

    port = sub.add_parser("wait-port", help="wait until addresses accept connections")
    port.add_argument("-t", "--timeout", type=float, help="give up after SECONDS (exit 124)")
    port.add_argument("addresses", metavar="ADDR", nargs="+", help="host:port or unix:/path")
    port.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS: run on success")
    port.set_defaults(run=cmd_wait_port)

    health = sub.add_parser("health", help="exit 0 when the daemon is SERVING")
    health.add_argument("-t", "--timeout", type=float, default=3.0, help="seconds (default 3)")
    health.set_defaults(run=None)
    return parser


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    own, command = _split_command(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(own)
    args.command = command
    out = Output(args.write_out)
    if args.run is None:
        return cmd_health(args, out)
    run: Callable[[argparse.Namespace, kqclient.RemoteKqueue, Output], int] = args.run
    try:
        with kqclient.connect(args.target) as client:
            # A short lease instead of CloseQueue: the daemon reclaims the queue by itself, and
            # kqctl returns as soon as it knows (scripts wait on its exit).
            return run(args, client.kqueue(lease=QUEUE_LEASE), out)
    except kqclient.DaemonUnavailable as exc:
        warn(str(exc))
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (OSError, ValueError, kqclient.KqdError) as exc:
        warn(str(exc))
        return EXIT_FAILURE if getattr(exc, "errno", None) != errno.ETIMEDOUT else EXIT_TIMEOUT


def console_main() -> NoReturn:
    """The ``kqctl`` command. Once the answer is out, exit at once: tearing down the
    interpreter and gRPC's threads would add tens of milliseconds to every pwait."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
