"""benchmarks/vision_9b.py runs its logic on CPU at tiny sizes (the GPU run at released sizes is in gpu_check.sh)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "vision_9b.py"


def test_vision_9b_benchmark_tiny_cpu_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("vision_9b", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny", "--tiles", "1,2", "--iters", "1", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert out.count("9B tower, float32") == 2 and "9B/baseline time" in out
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert [r["nine"]["out_shape"] for r in runs] == [[1, 4, 32], [2, 4, 32]]
