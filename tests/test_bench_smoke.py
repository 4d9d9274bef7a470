"""The benchmarks run (how fast is for `python -m bench`, not for tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_scaling_benchmark_quick(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "scaling", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "select.poll" in result.stdout
    assert (tmp_path / "scaling.md").read_text().startswith("| N registered")
