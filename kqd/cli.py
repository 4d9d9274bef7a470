"""The ``kqd`` command."""

from __future__ import annotations

import argparse
import os
import sys

from kqd.core import KQ_EV_ADD, KQ_FILTER_PROC, KQ_NOTE_EXIT, kevent, kqueue


def describe_status(status: int) -> str:
    """wait(2) status in words: 'exited with 3', 'killed by signal 9', or 'status unknown'."""
    if status < 0:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exited with {os.WEXITSTATUS(status)}"


def _pwait(args: argparse.Namespace) -> int:
    """The seed article's pwait: wait for any process, not only a child."""
    with kqueue() as kq:
        changes = [kevent(pid, KQ_FILTER_PROC, KQ_EV_ADD, KQ_NOTE_EXIT) for pid in args.pids]
        errors = kq.control(changes, len(changes), 0)
        for err in errors:
            if err.data:
                print(f"kqd pwait: {err.ident}: {os.strerror(err.data)}", file=sys.stderr)
        waiting = len(changes) - sum(1 for e in errors if e.data)
        while waiting:
            for ev in kq.control(None, waiting):
                waiting -= 1
                if args.verbose:
                    print(f"{ev.ident}: {describe_status(ev.data)}")
    return 1 if any(e.data for e in errors) else 0


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from kqd.daemon.server import default_listen, serve

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(serve(args.listen or [default_listen()], args.lease, args.grace))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kqd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="host remote kqueues over gRPC")
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="unix:///path or host:port, repeatable (default unix:///run/kqd/kqd.sock for root)",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=60.0,
        help="seconds a queue outlives its last connection (default 60)",
    )
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds streams get to end on SIGTERM (default 5)"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)
    pwait = sub.add_parser("pwait", help="wait for processes to exit (in-process core demo)")
    pwait.add_argument("-v", "--verbose", action="store_true", help="print each exit status")
    pwait.add_argument("pids", metavar="PID", type=int, nargs="+")
    pwait.set_defaults(func=_pwait)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
