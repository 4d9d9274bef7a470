"""``python -m bench scaling [--quick] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import scaling

BENCHMARKS = {"scaling": scaling.main}


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
