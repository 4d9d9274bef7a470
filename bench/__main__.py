"""``python -m bench NAME [--quick] [--out DIR]``: scaling (the core vs poll), remote (the
daemon: latency and throughput next to the core)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import remote, scaling

BENCHMARKS = {"scaling": scaling.main, "remote": remote.main}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="few sizes and rounds (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return BENCHMARKS[args.name](quick=args.quick, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
