"""The tiny checkpoint evaluated in process and through OpenAI-compatible endpoints: complete reports, same answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nemo_eagle.eval.benchmarks import BENCHMARKS, load_items
from nemo_eagle.eval.cli import main as eval_main
from nemo_eagle.eval.runner import EvalSettings, run_eval

MAX_NEW = "6"  # the random tiny model never stops by itself; short answers keep the test fast


def _predictions(path: Path) -> dict[str, str]:
    return {r["id"]: r["prediction"] for r in map(json.loads, path.read_text().splitlines())}


def test_cli_on_tiny_model_writes_a_complete_report(tiny_ckpt, eval_files, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--benchmark", "docvqa", "--data", str(eval_files["docvqa"]), "--model", str(tiny_ckpt), "--out", str(out),
            "--max-new-tokens", MAX_NEW]
    assert eval_main(args) == 0
    assert "docvqa: ANLS = " in capsys.readouterr().out
    report = json.loads((out / "docvqa" / "report.json").read_text())
    assert report["complete"] and report["num_scored"] == report["num_questions"] == 3
    assert 0.0 <= report["score"] <= 100.0
    assert report["settings"]["max_tiles"] == 18 and report["settings"]["upscale"] is True
    assert report["predictor"] == {"kind": "model", "path": str(tiny_ckpt), "dtype": "float32"}
    assert set(report["published"]) == {"Eagle2-1B", "Eagle2-2B", "Eagle2-9B", "Eagle2.5-8B"}
    for name in ("report.md", "chart.png", "scored.jsonl", "predictions.jsonl"):
        assert (out / "docvqa" / name).is_file(), name
    assert (out / "summary.md").is_file() and (out / "summary.png").is_file()
    before = (out / "docvqa" / "predictions.jsonl").read_bytes()
    assert eval_main(args) == 0  # resumed: nothing new to predict, nothing appended
    assert (out / "docvqa" / "predictions.jsonl").read_bytes() == before


def test_every_benchmark_runs_on_the_tiny_model(tiny_predictor, eval_files, tmp_path):
    for name, path in eval_files.items():
        bench = BENCHMARKS[name]
        items = load_items(bench, path)
        settings = EvalSettings(benchmark=name, data=str(path), max_tiles=bench.max_tiles, upscale=bench.upscale,
                                max_new_tokens=int(MAX_NEW), limit=1 if not bench.circular else None)
        report = run_eval(bench, items, tiny_predictor, tmp_path, settings)
        assert report["complete"], name
        assert report["score"] is not None and 0.0 <= report["score"] <= bench.scale, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["benchmarks"]) == len(eval_files) and all(summary["complete"].values())


@pytest.mark.parametrize("name", ["docvqa", "mmmu", "ocrbench", "mathvista"])
def test_endpoint_gives_the_same_predictions(name, sensitive_predictor, eagle_endpoint, eval_files, tmp_path):
    """Same weights, same protocol: in process and over HTTP the answers match question by question
    (DocVQA: 18 tiles and 2x upscaling; MMMU: two images in one question; MathVista: no upscaling)."""
    url, app = eagle_endpoint
    bench = BENCHMARKS[name]
    items = load_items(bench, eval_files[name])[:2]

    def local(upscale: bool, out: Path) -> dict:
        settings = EvalSettings(benchmark=name, data=str(eval_files[name].resolve()), max_tiles=bench.max_tiles,
                                upscale=upscale, max_new_tokens=int(MAX_NEW), limit=2)
        return run_eval(bench, items, sensitive_predictor, out, settings)

    report = local(bench.upscale, tmp_path / "local")
    assert eval_main(["--benchmark", name, "--data", str(eval_files[name]), "--max-new-tokens", MAX_NEW, "--limit",
                      "2", "--endpoint", url, "--out", str(tmp_path / "remote")]) == 0
    remote = json.loads((tmp_path / "remote" / name / "report.json").read_text())
    assert remote["predictor"]["model"] == "sensitive-eagle2"  # discovered from /v1/models
    a = _predictions(tmp_path / "local" / name / "predictions.jsonl")
    b = _predictions(tmp_path / "remote" / name / "predictions.jsonl")
    assert list(a) == list(b) == [it.id for it in items]
    assert a == b and all(a.values())
    assert remote["score"] == report["score"]
    sent = app.state.requests[-1]
    assert sent["max_tiles"] == bench.max_tiles and sent["temperature"] == 0.0 and sent["max_tokens"] == int(MAX_NEW)
    # the answers depend on the pixels: the other upscaling choice changes at least one of them
    local(not bench.upscale, tmp_path / "flipped")
    assert _predictions(tmp_path / "flipped" / name / "predictions.jsonl") != a


@pytest.mark.parametrize("name", ["docvqa", "mmmu"])
def test_project_server_gives_the_same_predictions(name, sensitive_predictor, serve_endpoint, eval_files, tmp_path):
    bench = BENCHMARKS[name]
    items = load_items(bench, eval_files[name])[:2]
    settings = EvalSettings(benchmark=name, data=str(eval_files[name].resolve()), max_tiles=bench.max_tiles,
                            upscale=bench.upscale, max_new_tokens=int(MAX_NEW), limit=2)
    run_eval(bench, items, sensitive_predictor, tmp_path / "local", settings)
    assert eval_main(["--benchmark", name, "--data", str(eval_files[name]), "--max-new-tokens", MAX_NEW, "--limit",
                      "2", "--endpoint", serve_endpoint, "--out", str(tmp_path / "served")]) == 0
    a = _predictions(tmp_path / "local" / name / "predictions.jsonl")
    assert _predictions(tmp_path / "served" / name / "predictions.jsonl") == a and all(a.values())
