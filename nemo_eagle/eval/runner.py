"""The evaluation loop: prepare images, predict what is missing (appending to a JSONL), score, report.

Predictions are kept verbatim and scored at report time, so a rerun only asks for missing questions and a
metric fix never needs new predictions.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from tqdm import tqdm

from nemo_eagle.eval.benchmarks import Benchmark, Item
from nemo_eagle.eval.predictors import Predictor
from nemo_eagle.eval.report import published_for, write_report, write_summary
from nemo_eagle.synth.journal import Journal, atomic_write_json, atomic_write_text, read_journal

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalSettings:
    benchmark: str
    data: str
    max_tiles: int
    upscale: bool
    max_new_tokens: int
    split: str | None = None
    limit: int | None = None


def prepare_images(item: Item, upscale: bool) -> list[Image.Image]:
    """RGB (alpha over white, EXIF orientation applied), then 2x bilinear when the protocol upscales."""
    from nemo_eagle.data.images import to_rgb

    out = []
    for src in item.images:
        img = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        img = to_rgb(ImageOps.exif_transpose(img))
        if upscale:
            img = img.resize((img.width * 2, img.height * 2), Image.Resampling.BILINEAR)
        out.append(img)
    return out


def _check_run(bench_dir: Path, identity: dict[str, Any], overwrite: bool) -> None:
    run_file = bench_dir / "run.json"
    if run_file.exists() and not overwrite:
        before = json.loads(run_file.read_text())
        if before != identity:
            diff = ", ".join(f"{k}: {before.get(k)!r} -> {v!r}" for k, v in identity.items() if before.get(k) != v)
            raise ValueError(f"{bench_dir} holds predictions of another run ({diff}); "
                             f"pass --overwrite or use another --out")
    elif overwrite:
        (bench_dir / "predictions.jsonl").unlink(missing_ok=True)
    atomic_write_json(run_file, identity)


def score(bench: Benchmark, items: list[Item], preds: dict[str, str]) -> tuple[list[dict], dict[str, Any]]:
    """Per-question rows and the aggregate (circular groups count only when every rotation is right)."""
    rows = []
    for it in items:
        if it.id not in preds:
            continue
        s, extracted = bench.scorer(preds[it.id], it)
        rows.append({"id": it.id, "prediction": preds[it.id], "extracted": extracted, "answers": it.answers,
                     "score": s, "category": it.meta.get("category"), "group": it.meta.get("group", it.id)})
    units: dict[str, dict[str, Any]] = {}  # question or circular group -> score
    if bench.circular:
        sizes: dict[str, int] = {}
        for it in items:
            sizes[it.meta["group"]] = sizes.get(it.meta["group"], 0) + 1
        for r in rows:
            u = units.setdefault(r["group"], {"score": 1.0, "n": 0, "category": r["category"]})
            u["score"] = min(u["score"], r["score"])
            u["n"] += 1
        units = {g: u for g, u in units.items() if u["n"] == sizes[g]}  # only finished groups
        total_units = len(sizes)
    else:
        units = {r["id"]: {"score": r["score"], "category": r["category"]} for r in rows}
        total_units = len(items)
    mean = sum(u["score"] for u in units.values()) / len(units) if units else None
    per_cat: dict[str, dict[str, Any]] = {}
    for u in units.values():
        if u["category"]:
            c = per_cat.setdefault(str(u["category"]), {"n": 0, "sum": 0.0})
            c["n"] += 1
            c["sum"] += u["score"]
    agg = {
        "score": None if mean is None else mean * bench.scale,
        "num_questions": total_units,
        "num_scored": len(units),
        "complete": len(units) == total_units,
        "per_category": {c: {"n": v["n"], "score": v["sum"] / v["n"] * bench.scale} for c, v in per_cat.items()},
    }
    return rows, agg


def run_eval(bench: Benchmark, items: list[Item], predictor: Predictor, out: Path, settings: EvalSettings, *,
             overwrite: bool = False) -> dict[str, Any]:
    bench_dir = Path(out) / bench.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    if settings.limit is not None:
        items = items[: settings.limit]
    desc = predictor.describe()
    _check_run(bench_dir, {**asdict(settings), "predictor": desc}, overwrite)
    pred_path = bench_dir / "predictions.jsonl"
    journal = Journal(pred_path)  # cuts a torn last line first
    try:
        preds = {r["id"]: r["prediction"] for r in read_journal(pred_path)}
        todo = [it for it in items if it.id not in preds]
        log.info("%s: %d questions, %d already predicted, %d to go (max_tiles %d, upscale %s, greedy)", bench.name,
                 len(items), len(items) - len(todo), len(todo), settings.max_tiles, settings.upscale)
        # the bar counts all questions of the run, those predicted by an earlier run included
        with tqdm(total=len(items), initial=len(items) - len(todo), desc=bench.name, unit="q",
                  dynamic_ncols=True) as bar:
            for it in todo:
                t0 = time.monotonic()
                text = predictor.predict(it.prompt, prepare_images(it, settings.upscale),
                                         max_tiles=settings.max_tiles, max_new_tokens=settings.max_new_tokens)
                journal.append({"id": it.id, "prediction": text, "seconds": round(time.monotonic() - t0, 3)})
                preds[it.id] = text
                bar.update(1)
    finally:
        journal.close()
    rows, agg = score(bench, items, preds)
    atomic_write_text(bench_dir / "scored.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    label = f"{desc['kind']}: {Path(desc['path']).name}" if desc["kind"] == "model" else f"endpoint: {desc['model']}"
    report = {"benchmark": bench.name, "metric": bench.metric, "scale": bench.scale, **agg,
              "published_key": bench.published_key, "published": published_for(bench.published_key),
              "settings": asdict(settings), "predictor": desc, "predictor_label": label,
              "files": {"predictions": "predictions.jsonl", "scored": "scored.jsonl", "markdown": "report.md",
                        "chart": "chart.png"}}
    write_report(bench_dir, report)
    write_summary(Path(out))
    return report
