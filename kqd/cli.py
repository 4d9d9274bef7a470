"""kqd: kqueue(2) semantics on Linux. ``kqd serve`` hosts remote kqueues over gRPC; talk to it
with kqctl or the kqclient library."""

from __future__ import annotations

import argparse
import sys


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from kqd.daemon.server import serve
    from kqd.default_socket import default_socket

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    return asyncio.run(serve(args.listen or [default_socket()], args.lease, args.grace))


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
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
