"""``python -m bench all``: every comparison, run several times, one Markdown report, plots.

Each run starts a fresh daemon (bench/session.py) and runs the sections in a fixed order, each
printing its tables as it finishes. The report gives, per number, the median over runs and the
min-max spread of the per-run values, then the targets from the project's performance issue,
each marked met or MISSED with the number measured (bench/targets.py).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import (
    command_start,
    daemon_ready,
    exit_latency,
    fairness,
    file_latency,
    idle,
    memory,
    port_latency,
    register_latency,
    targets,
    throughput,
    wakeup,
)
from bench.session import Session, session
from bench.stats import Results, Table

SECTIONS: dict[str, Callable[[Session], list[Table]]] = {
    "exit": exit_latency.measure,
    "file": file_latency.measure,
    "port": port_latency.measure,
    "start": command_start.measure,
    "wakeup": wakeup.measure,
    "fairness": fairness.measure,
    "register": register_latency.measure,
    "idle": idle.measure,
    "memory": memory.measure,
    "throughput": throughput.measure,
    "ready": daemon_ready.measure,
}
LATENCY = ["exit", "file", "port", "start"]  # plotted


def _plots(out: Path, results: Results) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (python -m bench setup)")
        return []
    written = []
    shown = [key for key in LATENCY if key in results.tables]
    if shown:
        fig, axes = plt.subplots(len(shown), 1, figsize=(9, 3.2 * len(shown)), squeeze=False)
        for ax, key in zip(axes[:, 0], shown, strict=True):
            first = results.tables[key][0]
            names = [n for n in first.rows if results.runs(key, n, 0)]
            runs = [results.runs(key, n, 0) or [] for n in names]
            p50 = [results.median(key, n, 0) or 0 for n in names]
            spread = [
                [m - min(r) for m, r in zip(p50, runs, strict=True)],
                [max(r) - m for m, r in zip(p50, runs, strict=True)],
            ]
            colors = ["tab:blue" if n.startswith("kq") else "tab:gray" for n in names]
            ax.barh(names, p50, xerr=spread, color=colors)
            ax.set_xscale("log")
            ax.set_xlabel("p50 latency (ms, log scale; bars: median of runs, whiskers: min-max)")
            ax.set_title(first.title)
            ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=100)
        written.append("latency.png")
    if "wakeup" in results.tables:
        rows = list(results.tables["wakeup"][0].rows)
        fig, ax = plt.subplots(figsize=(7, 4))
        for column, label in [(0, "kqd remote control()"), (1, "select.poll")]:
            points = [(r, results.median("wakeup", r, column)) for r in rows]
            shown_points = [(int(r.replace(",", "")), v) for r, v in points if v is not None]
            ax.plot(*zip(*shown_points, strict=True), marker="o", label=label)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="registered (N)",
            ylabel="one wake-up (µs)",
            title="Wake-up cost vs registrations",
        )
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "wakeup.png", dpi=100)
        written.append("wakeup.png")
    return written


def run(*, quick: bool, out: Path, runs: int, only: set[str] | None = None) -> list[str]:
    """Run the sections (all, or *only* these) *runs* times and write the report; the sections
    that failed (each failure is in the report, and the others still run)."""
    started = time.monotonic()
    results = Results()
    failed: list[str] = []
    for number in range(1, runs + 1):
        with session(quick) as run_:
            for key, measure in SECTIONS.items():
                if only is not None and key not in only:
                    continue
                section_start = time.monotonic()
                try:
                    tables = measure(run_)
                except Exception as exc:  # reported, and the other sections still run
                    traceback.print_exc()
                    failed.append(f"{key}, run {number}: {type(exc).__name__}: {exc}")
                    continue
                for table in tables:
                    results.add(table)
                    print(f"run {number}/{runs}: {table.markdown()}\n")
                print(f"({key}: {time.monotonic() - section_start:.0f} s)\n", flush=True)
    sections = [results.markdown(key) for key in results.tables]
    sections += ["### Failed\n\n" + "\n".join(f"- {f}" for f in failed)] if failed else []
    report = "\n\n".join(sections)
    if only is None:
        report += "\n\n### Targets\n\n" + "\n".join(targets.check(results))
    report += "".join(f"\n\n![{p}]({p})" for p in _plots(out, results))
    elapsed = time.monotonic() - started
    spread = " (min-max over runs in brackets)" if runs > 1 else ""
    report = (
        f"## kqd benchmarks ({'quick' if quick else 'full'} run, {runs} run(s){spread}, "
        f"{elapsed:.0f} s, Unix socket)\n\n"
        "Every latency is from the event to the waiter knowing (a command: its exit), after "
        "the same idle for every contestant, trials interleaved round by round; each cell is "
        f"the median over runs of the per-run value.\n\n{report}\n"
    )
    (out / "report.md").write_text(report)
    print(report)
    print(f"wrote {out / 'report.md'}")
    return failed
