"""Medians and tails of samples, one section's numbers from one run (Table), the same section over
several runs (Results: the median of the per-run values and their min-max spread), and the
Markdown tables the benchmarks print."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

Cell = float | None  # None: not applicable (e.g. beyond a descriptor limit)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def p50_p99(samples: list[float]) -> list[Cell]:
    return [statistics.median(samples), percentile(samples, 0.99)]


def table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---", *("---:" for _ in header[1:])]  # first column text, the others numbers
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Table:
    """One section's numbers from one run: a row per peer (or size, or process), in order; a
    skipped row holds the reason instead of numbers."""

    key: str  # how targets name it
    title: str
    header: list[str]  # the row label's column, then one per value
    rows: dict[str, list[Cell] | str] = field(default_factory=dict)
    fmt: str = "{:,.3f}"

    def markdown(self) -> str:
        return Results([self]).markdown(self.key)


class Results:
    """Tables of every run, by key; a cell is the median over runs and, with several runs, the
    min-max spread of the per-run values."""

    def __init__(self, tables: list[Table] | None = None) -> None:
        self.tables: dict[str, list[Table]] = {}
        for t in tables or []:
            self.add(t)

    def add(self, t: Table) -> None:
        self.tables.setdefault(t.key, []).append(t)

    def runs(self, key: str, row: str, column: int) -> list[float] | None:
        """The value of every run, or None when it is missing from any of them."""
        values: list[float] = []
        for t in self.tables.get(key, []):
            cells = t.rows.get(row)
            value = cells[column] if isinstance(cells, list) else None
            if value is None:
                return None
            values.append(value)
        return values or None

    def median(self, key: str, row: str, column: int) -> float | None:
        values = self.runs(key, row, column)
        return None if values is None else statistics.median(values)

    def markdown(self, key: str) -> str:
        first = self.tables[key][0]
        lines = []
        for row, cells in first.rows.items():
            if isinstance(cells, str):
                lines.append([row, "skipped", *([cells] if len(first.header) > 2 else [])])
                lines[-1] += [""] * (len(first.header) - len(lines[-1]))
                continue
            line = [row]
            for column in range(len(cells)):
                values = self.runs(key, row, column)
                line.append("n/a" if values is None else self._cell(first.fmt, values))
            lines.append(line)
        return f"### {first.title}\n\n" + table(first.header, lines)

    @staticmethod
    def _cell(fmt: str, values: list[float]) -> str:
        text = fmt.format(statistics.median(values))
        if len(values) > 1:
            text += f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
        return text
