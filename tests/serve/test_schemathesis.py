"""A bounded schemathesis run (every check) against a real ``nemo-eagle serve --backend local`` on the tiny model:
no 5xx, no response that breaks the server's own OpenAPI document, no check failing. ``benchmarks/fuzz_api.py``
is the harness; this runs it small (a few test cases per operation and phase, well under a minute on 2 cores).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from serve_helpers import REPO

pytest.importorskip("schemathesis", reason="schemathesis comes with the dev extra")


@pytest.mark.slow
def test_schemathesis_finds_nothing(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "fuzz_api.py"), "--backend", "local", "--max-examples", "4",
           "--seed", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    found = re.search(r": (\d+) requests in .* 5xx: (\d+), no failures", summary)
    assert found, summary
    requests, server_errors = int(found.group(1)), int(found.group(2))
    assert server_errors == 0 and requests > 300, summary
