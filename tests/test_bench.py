"""The benchmarks still run (one round each, no timing judged here: figures belong to bench/ itself)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parent.parent / "bench"


def test_jmx_poll_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "jmx_poll.py"), "--polls", "1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "jmxquery poll, default jmx.java_options" in result.stdout
    assert "% of one core per node" in result.stdout
