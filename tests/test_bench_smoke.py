"""The benchmarks run (how fast is for `python -m bench`, not for tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("name", "expected", "report"),
    [("scaling", "select.poll", "scaling.md"), ("all", "### Targets", "report.md")],
)
def test_benchmark_runs_quick(tmp_path: Path, name: str, expected: str, report: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
    assert (tmp_path / report).exists()
