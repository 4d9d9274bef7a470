"""``python -m bench NAME [--quick] [--out DIR]``.

scaling: the in-process core against select.poll (the kqueue paper's figure). state: what a
state directory costs (throughput, Register latency) and how fast a restart is. all: every
comparison against the tools users would pick instead, each section run --runs times (see
bench/report.py). remote: the exit, file and throughput sections only. setup: install the peers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import peers, report, scaling, state

SECTIONS = list(report.SECTIONS)

REMOTE_SECTIONS = {"exit", "file", "throughput"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=["all", "remote", "scaling", "state", "setup"])
    parser.add_argument("--quick", action="store_true", help="few sizes and trials (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    parser.add_argument("--only", help=f"comma-separated sections of all: {', '.join(SECTIONS)}")
    parser.add_argument(
        "--runs", type=int, help="run every section this many times (default: 3, --quick: 1)"
    )
    args = parser.parse_args(argv)
    if args.name == "setup":
        return peers.setup()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.name == "scaling":
        return scaling.main(quick=args.quick, out=args.out)
    if args.name == "state":
        return state.main(quick=args.quick)
    only = set(args.only.split(",")) if args.only else None
    if only and not only <= set(SECTIONS):
        parser.error(f"--only takes sections from: {', '.join(SECTIONS)}")
    runs = args.runs or (1 if args.quick else 3)
    if runs < 1:
        parser.error("--runs takes a positive number")
    failed = report.run(
        quick=args.quick,
        out=args.out,
        runs=runs,
        only=REMOTE_SECTIONS if args.name == "remote" else only,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
