"""kqd: kqueue(2) semantics on Linux. ``kqd serve`` hosts remote kqueues over gRPC; talk to it
with kqctl or the kqclient library."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _group(name: str) -> int:
    """A group name or number, for --socket-group."""
    import grp

    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no group named {name!r}") from None


def _metrics_address(text: str) -> tuple[str, int]:
    """--metrics-listen: host:port, or a port alone for loopback."""
    from kqd.daemon.metrics import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from kqd.daemon.listeners import TlsFiles
    from kqd.daemon.policy import Policy, PolicyError
    from kqd.daemon.server import ServeOptions, serve
    from kqd.daemon.store import default_state_dir
    from kqd.default_socket import default_socket
    from kqd.logs import configure

    tls_files = (args.tls_cert, args.tls_key, args.tls_client_ca)
    if any(tls_files) and not all(tls_files):
        print(
            "kqd serve: TLS needs all of --tls-cert, --tls-key and --tls-client-ca", file=sys.stderr
        )
        return 2
    policy = None
    if args.policy:
        try:
            policy = Policy.load(args.policy)
        except PolicyError as exc:
            # Unusable configuration, as an unusable --listen address: exit 2, one line.
            print(f"kqd serve: policy {exc}", file=sys.stderr)
            return 2
    configure(args.log_level, args.log_format)
    if policy is not None:
        logging.getLogger("kqd.daemon").info(
            "policy %s", policy.describe(), extra={"policy": policy.source}
        )
    options = ServeOptions(
        listen=args.listen or [default_socket()],
        lease=args.lease,
        grace=args.grace,
        tls=TlsFiles(*tls_files) if all(tls_files) else None,
        insecure_tcp=args.insecure_tcp,
        socket_group=args.socket_group,
        state_dir=None if args.no_state else args.state_dir or default_state_dir(),
        sync=args.sync,
        reset_state=args.reset_state,
        policy=policy,
        metrics_listen=args.metrics_listen,
    )
    return asyncio.run(serve(options))


def _policy_check(args: argparse.Namespace) -> int:
    """Exit 0 when every file is a usable policy (one line each on stdout), else 1 with one
    line per unusable file on stderr (FILE:LINE: KEY: what is wrong)."""
    from kqd.daemon.policy import Policy, PolicyError

    status = 0
    for path in args.files:
        try:
            policy = Policy.load(path)
        except PolicyError as exc:
            print(f"kqd policy check: {exc}", file=sys.stderr)
            status = 1
        else:
            print(f"{policy.describe()}: ok")
    return status


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
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="log lines on stderr as text (default) or JSON Lines (ts, level, logger, msg, ...)",
    )
    serve.add_argument(
        "--metrics-listen",
        type=_metrics_address,
        metavar="ADDR",
        help="serve Prometheus metrics at http://ADDR/metrics (host:port, or PORT for "
        "127.0.0.1:PORT); off by default. Counts only: no ids, paths or pids",
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate for host:port listeners")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        help="PEM CA bundle: clients must present a certificate it signed",
    )
    serve.add_argument(
        "--state-dir",
        type=Path,
        help="where queues survive restarts (default /var/lib/kqd for root, else "
        "$XDG_STATE_HOME/kqd)",
    )
    serve.add_argument(
        "--no-state",
        action="store_true",
        help="keep nothing on disk: a restart loses every queue (tests, throwaway daemons)",
    )
    serve.add_argument(
        "--sync",
        choices=["normal", "full"],
        default="normal",
        help="normal: state survives a crash of kqd; full: also a power loss (an fsync per "
        "commit)",
    )
    serve.add_argument(
        "--reset-state",
        action="store_true",
        help="start with an empty state directory (what was in it is deleted)",
    )
    serve.add_argument(
        "--socket-group",
        type=_group,
        help="group (name or gid) whose members may connect to the Unix sockets (mode 0660)",
    )
    serve.add_argument(
        "--insecure-tcp",
        action="store_true",
        help="allow plain TCP (no TLS, nobody identified) on loopback addresses",
    )
    serve.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        default=os.environ.get("KQD_POLICY") or None,
        help="the operator's policy (TOML; reloaded on SIGHUP); default $KQD_POLICY, else the "
        "built-in defaults",
    )
    serve.set_defaults(func=_serve)
    policy = sub.add_parser("policy", help="work with policy files")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser(
        "check",
        help="check policy files",
        description="Check policy files: exit 0 when all are usable, 1 when one is not (one "
        "line each: FILE:LINE: KEY: what is wrong), 2 on a usage error.",
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.set_defaults(func=_policy_check)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
