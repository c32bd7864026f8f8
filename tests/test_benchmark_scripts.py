"""Every benchmark script starts: ``python benchmarks/<name>.py --help`` imports what the script imports, run the
way the README says (the script's folder first on ``sys.path``), and prints its usage. A script named like an
installed package (a ``benchmarks/kernels.py`` shadowed the ``kernels`` package transformers imports) or an import
that broke fails here, not in the hands of whoever runs the benchmark next."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
def test_benchmark_script_starts(script):
    r = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                       timeout=300, cwd=BENCHMARKS.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
