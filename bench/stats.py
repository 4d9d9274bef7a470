"""Medians and tails of samples, and the Markdown tables the benchmarks print."""

from __future__ import annotations

import statistics


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary_ms(samples_ns: list[int]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = [s / 1e6 for s in samples_ns]
    return statistics.median(ms), percentile(ms, 0.99)


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---", *("---:" for _ in header[1:])]  # first column text, the others numbers
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
