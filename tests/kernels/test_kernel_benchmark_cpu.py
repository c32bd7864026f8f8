"""benchmarks/kernel_ops.py in CPU mode runs and prints both pipelines' throughput and their ratio."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_ops.py"


def test_cpu_benchmark_prints_images_per_second_and_ratio(capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--cpu", "--sizes", "200x150", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    line = re.search(r"200x150 grid \d+x\d+ \((\d+) tiles\): torch reference +([\d.]+) images/s, "
                     r"PIL per-tile +([\d.]+) images/s, ratio x([\d.]+) \(max difference ([\d.]+) uint8 levels\)", out)
    assert line, out
    assert float(line.group(2)) > 0 and float(line.group(3)) > 0
    assert float(line.group(5)) <= 2  # PIL's bicubic differs from torch's by a level or two, never more
