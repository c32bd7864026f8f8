"""Benchmark adapters on the fixture files, the protocol defaults, scoring, resume and reports (scripted predictors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from nemo_eagle.eval.benchmarks import BENCHMARKS, DataError, get_benchmark, load_items
from nemo_eagle.eval.cli import main as eval_main
from nemo_eagle.eval.runner import EvalSettings, run_eval

# EAGLE2_SPEC.md, "NVIDIA's evaluation protocol": 6 tiles by default; 12 ChartQA/MMMU; 18 DocVQA; 24 InfoVQA/OCRBench;
# 2x upscaling except MathVista, AI2D, InfoVQA.
SPEC_TILES = {"docvqa": 18, "infovqa": 24, "chartqa": 12, "textvqa": 6, "ocrbench": 24, "ai2d": 6, "scienceqa": 6,
              "mmstar": 6, "mmbench": 6, "mmmu": 12, "mathvista": 6}
NO_UPSCALE = {"mathvista", "ai2d", "infovqa"}

# The right answer, as a model would write it, per (benchmark, question id) of the fixtures.
GOLD = {
    "docvqa": {"101": "No. 42", "102": "$310", "103": "1998"},
    "infovqa": {"65001": "65%", "65002": "Tea"},
    "chartqa": {"0:chart_1.png": "50.0", "1:chart_1.png": "first", "2:chart_2.png": "40.8"},  # 40.8: 2% off 40
    "textvqa": {"34602": "Stop", "34603": "red"},
    "ocrbench": {"0": "The word is hello", "1": "x^{2}+1", "2": "It opens 9-5"},
    "ai2d": {"0": "A", "1": "(B) rabbit"},
    "scienceqa": {"7": "B", "12": "whale"},
    "mmstar": {"0": "B", "1": "C"},
    "mmmu": {"validation_Art_1": "B", "validation_Math_2": "The sum is 12."},
    "mathvista": {"1": "The answer is B", "2": "3", "3": "1.5"},
}


class ScriptedPredictor:
    """Answers from a prompt -> text table; records what it was asked."""

    def __init__(self, answers: dict[str, str], default: str = "zzz"):
        self.answers = answers
        self.default = default
        self.calls: list[dict] = []

    def predict(self, prompt, images, *, max_tiles, max_new_tokens):
        self.calls.append({"prompt": prompt, "sizes": [im.size for im in images], "modes": [im.mode for im in images],
                           "max_tiles": max_tiles, "max_new_tokens": max_new_tokens})
        return self.answers.get(prompt, self.default)

    def describe(self):
        return {"kind": "endpoint", "url": "scripted", "model": "scripted"}


def _settings(bench, data, **kw) -> EvalSettings:
    return EvalSettings(benchmark=bench.name, data=str(data), max_tiles=kw.get("max_tiles", bench.max_tiles),
                        upscale=kw.get("upscale", bench.upscale), max_new_tokens=bench.max_new_tokens,
                        limit=kw.get("limit"))


def test_protocol_defaults_follow_the_spec():
    assert set(BENCHMARKS) == set(SPEC_TILES)
    for name, bench in BENCHMARKS.items():
        assert bench.max_tiles == SPEC_TILES[name], name
        assert bench.upscale == (name not in NO_UPSCALE), name
    assert get_benchmark("DocVQA") is BENCHMARKS["docvqa"] and get_benchmark("MM-Bench") is BENCHMARKS["mmbench"]
    with pytest.raises(ValueError, match="unknown benchmark 'vqav9'"):
        get_benchmark("vqav9")


def test_fixtures_load_in_their_official_formats(eval_files):
    counts = {"docvqa": 3, "infovqa": 2, "chartqa": 3, "textvqa": 2, "ocrbench": 3, "ai2d": 2, "scienceqa": 2,
              "mmstar": 2, "mmbench": 6, "mmmu": 2, "mathvista": 3}
    for name, path in eval_files.items():
        items = load_items(BENCHMARKS[name], path)
        assert len(items) == counts[name], name
        for it in items:
            assert it.images and it.prompt and it.answers, (name, it.id)
    sqa = load_items(BENCHMARKS["scienceqa"], eval_files["scienceqa"])
    assert [it.id for it in sqa] == ["7", "12"]  # test split, with an image (15 has none, 20 is train)
    assert sqa[0].prompt.startswith("Hint: Two magnets are shown.\nWill these magnets") and sqa[0].answers == ["B"]
    mmmu = load_items(BENCHMARKS["mmmu"], eval_files["mmmu"])
    assert len(mmmu[1].images) == 2 and mmmu[1].meta["question_type"] == "open"
    assert [it.id for it in load_items(BENCHMARKS["mmmu"], eval_files["mmmu"], split="dev")] == ["dev_Art_1"]
    tvqa = load_items(BENCHMARKS["textvqa"], eval_files["textvqa"])
    assert len(tvqa[0].answers) == 10
    mmb = {it.id: it for it in load_items(BENCHMARKS["mmbench"], eval_files["mmbench"])}
    # shipped rotations keep their own answers; generated rotations move the answer with its option
    assert [mmb[i].answers[0] for i in ("3", "1000003", "2000003", "3000003")] == ["A", "D", "C", "B"]
    assert mmb["8@r1"].meta["options"] == {"A": "night", "B": "day"} and mmb["8@r1"].answers == ["B"]
    assert mmb["8@r1"].prompt.startswith("Hint: The sky is bright.\nIs it day or night?\nA. night\nB. day")


@pytest.mark.parametrize("name", sorted(GOLD))
def test_right_answers_score_full_marks_and_wrong_ones_zero(name, eval_files, tmp_path):
    bench = BENCHMARKS[name]
    items = load_items(bench, eval_files[name])
    right = ScriptedPredictor({it.prompt: GOLD[name][it.id] for it in items})
    report = run_eval(bench, items, right, tmp_path / "right", _settings(bench, eval_files[name]))
    assert report["complete"] and report["num_scored"] == len(items)
    assert report["score"] == pytest.approx(bench.scale), json.loads((tmp_path / "right" / name / "scored.jsonl")
                                                                     .read_text().splitlines()[0])
    wrong = ScriptedPredictor({}, default="Q")
    assert run_eval(bench, items, wrong, tmp_path / "wrong", _settings(bench, eval_files[name]))["score"] == 0.0
    # the protocol reached the predictor: tile limit, upscaling, RGB
    src = Image.open(items[0].images[0]) if isinstance(items[0].images[0], Path) else None
    call = right.calls[0]
    assert call["max_tiles"] == SPEC_TILES[name] and set(call["modes"]) == {"RGB"}
    if src is not None:
        factor = 1 if name in NO_UPSCALE else 2
        assert call["sizes"][0] == (src.width * factor, src.height * factor)


def test_partial_scores(eval_files, tmp_path):
    bench = BENCHMARKS["textvqa"]
    items = load_items(bench, eval_files["textvqa"])
    # "stop sign": 1 of 10 annotators -> 0.3; "red": 7 of 10 after normalisation ("Red", "red.") -> 1.0
    pred = ScriptedPredictor({items[0].prompt: "stop sign", items[1].prompt: "red"})
    report = run_eval(bench, items, pred, tmp_path, _settings(bench, eval_files["textvqa"]))
    assert report["score"] == pytest.approx(65.0)
    bench = BENCHMARKS["docvqa"]
    items = load_items(bench, eval_files["docvqa"])
    # "4" vs "42": NL 1/2 -> 0.5; "$31" vs "$310": 1/4 -> 0.75; "1989" vs "1998": 2/4 -> 0.5
    pred = ScriptedPredictor({items[0].prompt: "4", items[1].prompt: "$31", items[2].prompt: "1989"})
    report = run_eval(bench, items, pred, tmp_path, _settings(bench, eval_files["docvqa"]))
    assert report["score"] == pytest.approx(100 * (0.5 + 0.75 + 0.5) / 3)
    assert report["per_category"]["form"] == {"n": 2, "score": pytest.approx(50.0)}


def test_mmbench_circular_needs_every_rotation(eval_files, tmp_path):
    bench = BENCHMARKS["mmbench"]
    items = load_items(bench, eval_files["mmbench"])
    answers = {it.prompt: it.answers[0] for it in items}
    answers[next(it.prompt for it in items if it.id == "2000003")] = "A"  # one rotation of question 3 wrong
    report = run_eval(bench, items, ScriptedPredictor(answers), tmp_path, _settings(bench, eval_files["mmbench"]))
    assert report["num_questions"] == 2 and report["score"] == pytest.approx(50.0)
    # a model that always says "A" gets every first rotation right and no question
    report = run_eval(bench, items, ScriptedPredictor({}, default="A"), tmp_path / "a",
                      _settings(bench, eval_files["mmbench"]))
    assert report["score"] == 0.0


def test_resume_skips_predicted_questions_and_repairs_a_torn_line(eval_files, tmp_path):
    bench = BENCHMARKS["chartqa"]
    items = load_items(bench, eval_files["chartqa"])
    first = ScriptedPredictor({})
    report = run_eval(bench, items, first, tmp_path, _settings(bench, eval_files["chartqa"]))
    assert len(first.calls) == 3 and report["complete"]
    preds = tmp_path / "chartqa" / "predictions.jsonl"
    lines = preds.read_text().splitlines()
    preds.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed while writing the third
    again = ScriptedPredictor({})
    run_eval(bench, items, again, tmp_path, _settings(bench, eval_files["chartqa"]))
    assert [c["prompt"] for c in again.calls] == [items[2].prompt]
    ids = [json.loads(x)["id"] for x in preds.read_text().splitlines()]
    assert ids == [it.id for it in items]


def test_changed_settings_are_refused_unless_overwrite(eval_files, tmp_path):
    bench = BENCHMARKS["chartqa"]
    items = load_items(bench, eval_files["chartqa"])
    run_eval(bench, items, ScriptedPredictor({}), tmp_path, _settings(bench, eval_files["chartqa"]))
    with pytest.raises(ValueError, match="max_tiles: 12 -> 4"):
        run_eval(bench, items, ScriptedPredictor({}), tmp_path, _settings(bench, eval_files["chartqa"], max_tiles=4))
    p = ScriptedPredictor({})
    run_eval(bench, items, p, tmp_path, _settings(bench, eval_files["chartqa"], max_tiles=4), overwrite=True)
    assert len(p.calls) == 3


def test_report_files(eval_files, tmp_path):
    for name in ("docvqa", "ocrbench"):
        bench = BENCHMARKS[name]
        items = load_items(bench, eval_files[name])
        run_eval(bench, items, ScriptedPredictor({it.prompt: GOLD[name][it.id] for it in items}), tmp_path,
                 _settings(bench, eval_files[name]))
    report = json.loads((tmp_path / "ocrbench" / "report.json").read_text())
    assert report["score"] == 1000.0 and report["published"]["Eagle2-9B"] == 868
    md = (tmp_path / "docvqa" / "report.md").read_text()
    assert "| this run (endpoint: scripted) | 100.0 |" in md and "| Eagle2-2B (published) | 88.0 |" in md
    assert "max_tiles 18, 2x bilinear upscale, greedy" in md
    with Image.open(tmp_path / "docvqa" / "chart.png") as chart:
        assert chart.format == "PNG" and chart.width >= 500
        # the "this run" bar (first colour) is drawn
        assert (31, 119, 180) in {c for _, c in chart.convert("RGB").getcolors(1 << 16)}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["benchmarks"] == ["DocVQA", "OCRBench"]
    assert summary["rows"]["this run"] == [100.0, 1000.0] and summary["rows"]["Eagle2-1B"] == [81.8, 767]
    assert (tmp_path / "summary.png").is_file()
    assert "| Eagle2.5-8B | 94.1 | 869.0 |" in (tmp_path / "summary.md").read_text()


def test_bad_data_is_named(tmp_path, eval_files):
    bad = tmp_path / "docvqa.json"
    bad.write_text(json.dumps({"data": [{"questionId": 1, "image": "x.png"}]}))
    with pytest.raises(DataError, match=r"record 0: missing field\(s\) \['question'\]"):
        load_items(BENCHMARKS["docvqa"], bad)
    bad.write_text(json.dumps({"data": [{"questionId": 1, "question": "q", "image": "missing.png", "answers": []}]}))
    with pytest.raises(DataError, match="image 'missing.png' not found"):
        load_items(BENCHMARKS["docvqa"], bad)
    (tmp_path / "x.png").write_bytes((Path(eval_files["docvqa"]).parent / "documents" / "doc_a.png").read_bytes())
    bad.write_text(json.dumps({"data": [{"questionId": 1, "question": "q", "image": "x.png"}]}))
    with pytest.raises(DataError, match="1 question\\(s\\) have no reference answers"):
        load_items(BENCHMARKS["docvqa"], bad)
    bad.write_text(json.dumps({"questions": [{"questionId": 1}]}))
    with pytest.raises(DataError, match="expected a JSON object with a 'data' list"):
        load_items(BENCHMARKS["docvqa"], bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_items(BENCHMARKS["chartqa"], bad)
    tsv = tmp_path / "x.tsv"
    tsv.write_text("index\tquestion\tanswer\n0\tq\tA\n")
    with pytest.raises(DataError, match=r"missing field\(s\) \['image'\]"):
        load_items(BENCHMARKS["ai2d"], tsv)


def test_cli_errors_are_named(tmp_path, eval_files, capsys):
    assert eval_main(["--benchmark", "nope", "--data", str(eval_files["docvqa"]), "--endpoint", "http://x"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert eval_main(["--benchmark", "docvqa", "--data", str(tmp_path / "no.json"), "--endpoint", "http://x"]) == 2
    assert "no.json does not exist" in capsys.readouterr().err
    assert eval_main(["--benchmark", "docvqa", "--data", str(eval_files["docvqa"]), "--model", str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert eval_main(["--benchmark", "docvqa", "--data", str(eval_files["docvqa"]), "--endpoint", "http://x",
                      "--limit", "0"]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --model and --endpoint are exclusive
        eval_main(["--benchmark", "docvqa", "--data", "x", "--model", "m", "--endpoint", "e"])


def test_unreachable_endpoint_is_reported_and_resumable(eval_files, tmp_path, capsys):
    rc = eval_main(["--benchmark", "chartqa", "--data", str(eval_files["chartqa"]), "--endpoint",
                    "http://127.0.0.1:9/v1", "--served-model", "m", "--out", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9/v1/chat/completions" in err and "rerun to resume" in err
