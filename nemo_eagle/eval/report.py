"""Reports: the JSON report, a markdown table and a bar chart (drawn with PIL) against the published Eagle2 numbers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nemo_eagle.synth.journal import atomic_write_bytes, atomic_write_json, atomic_write_text

# Eagle2 report (arXiv 2501.14818), Table 7; OCRBench in points of 1000, the rest in percent.
PUBLISHED: dict[str, dict[str, float]] = {
    "Eagle2-1B": {"DocVQA": 81.8, "ChartQA": 77.0, "InfoVQA": 54.8, "TextVQA": 76.6, "OCRBench": 767, "MMStar": 48.5,
                  "AI2D": 70.9, "MMMU": 38.8, "MMB1.1": 63.0, "MathVista": 45.3},
    "Eagle2-2B": {"DocVQA": 88.0, "ChartQA": 82.3, "InfoVQA": 65.8, "TextVQA": 79.1, "OCRBench": 818, "MMStar": 56.4,
                  "AI2D": 79.3, "MMMU": 43.1, "MMB1.1": 74.9, "MathVista": 54.7},
    "Eagle2-9B": {"DocVQA": 92.6, "ChartQA": 86.4, "InfoVQA": 77.2, "TextVQA": 83.0, "OCRBench": 868, "MMStar": 62.6,
                  "AI2D": 83.9, "MMMU": 56.1, "MMB1.1": 80.6, "MathVista": 63.8},
    "Eagle2.5-8B": {"DocVQA": 94.1, "ChartQA": 87.5, "InfoVQA": 80.4, "TextVQA": 83.7, "OCRBench": 869,
                    "MMStar": 66.2, "AI2D": 84.5, "MMMU": 55.8, "MMB1.1": 81.7, "MathVista": 67.8},
}
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def published_for(key: str | None) -> dict[str, float | None]:
    return {model: (table.get(key) if key else None) for model, table in PUBLISHED.items()}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def render_markdown(report: dict[str, Any]) -> str:
    name, metric = report["benchmark"], report["metric"]
    col = report["published_key"] or name
    s = report["settings"]
    lines = [
        f"# {name} ({metric})",
        "",
        f"| model | {col} |",
        "|---|---|",
        f"| this run ({report['predictor_label']}) | {_fmt(report['score'])} |",
    ]
    lines += [f"| {m} (published) | {_fmt(v)} |" for m, v in report["published"].items()]
    lines += [
        "",
        f"{report['num_scored']} of {report['num_questions']} questions scored"
        + ("" if report["complete"] else " (INCOMPLETE: rerun to finish)")
        + f"; max_tiles {s['max_tiles']}, {'2x bilinear upscale' if s['upscale'] else 'no upscale'}, greedy, "
          f"max_new_tokens {s['max_new_tokens']}.",
    ]
    if report["per_category"]:
        lines += ["", "| category | n | score |", "|---|---|---|"]
        lines += [f"| {c} | {v['n']} | {_fmt(v['score'])} |" for c, v in sorted(report["per_category"].items())]
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_bar_chart(path: Path, title: str, groups: list[str], series: dict[str, list[float | None]],
                   y_max: float = 100.0, y_label: str = "score") -> None:
    """Grouped bar chart as PNG: one group per benchmark, one bar per series (a missing value draws no bar)."""
    width = max(520, 120 + len(groups) * (len(series) * 22 + 30))
    height, left, right, top, bottom = 380, 60, 20, 50, 70
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 14), title, fill="black", font=_font(16))
    plot_h = height - top - bottom
    for frac in (0, 0.25, 0.5, 0.75, 1.0):  # y grid
        y = top + plot_h * (1 - frac)
        d.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        d.text((8, y - 6), f"{y_max * frac:.0f}", fill="black", font=_font(11))
    d.text((8, top - 20), y_label, fill="black", font=_font(11))
    group_w = (width - left - right) / max(1, len(groups))
    bar_w = min(22.0, (group_w - 12) / max(1, len(series)))
    for g, name in enumerate(groups):
        x0 = left + g * group_w + (group_w - bar_w * len(series)) / 2
        for s, values in enumerate(series.values()):
            v = values[g]
            if v is None:
                continue
            h = plot_h * max(0.0, min(v, y_max)) / y_max
            bx = x0 + s * bar_w
            d.rectangle([bx, top + plot_h - h, bx + bar_w - 2, top + plot_h], fill=COLOURS[s % len(COLOURS)])
            label = f"{v:.0f}"
            d.text((bx + (bar_w - 2 - d.textlength(label, font=_font(9))) / 2, top + plot_h - h - 11), label,
                   fill="black", font=_font(9))
        name_w = d.textlength(name, font=_font(11))
        d.text((left + g * group_w + (group_w - name_w) / 2, top + plot_h + 6), name, fill="black", font=_font(11))
    lx = left
    for s, label in enumerate(series):  # legend
        d.rectangle([lx, height - 24, lx + 10, height - 14], fill=COLOURS[s % len(COLOURS)])
        d.text((lx + 14, height - 27), label, fill="black", font=_font(11))
        lx += 24 + int(d.textlength(label, font=_font(11)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_report(bench_dir: Path, report: dict[str, Any]) -> None:
    atomic_write_json(bench_dir / "report.json", report)
    atomic_write_text(bench_dir / "report.md", render_markdown(report))
    label = report["published_key"] or report["benchmark"]
    series = {"this run": [report["score"]], **{m: [v] for m, v in report["published"].items()}}
    y_max = 1000.0 if report["scale"] == 1000.0 else 100.0
    draw_bar_chart(bench_dir / "chart.png", f"{report['benchmark']}: {report['metric']}", [label], series, y_max,
                   "points" if y_max == 1000.0 else "%")


def write_summary(out: Path) -> dict[str, Any] | None:
    """Collect every ``OUT/*/report.json`` into summary.json / summary.md / summary.png (OCRBench shown /10)."""
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*/report.json"))]
    if not reports:
        return None
    cols = [r["published_key"] or r["benchmark"] for r in reports]
    rows = {"this run": [r["score"] for r in reports]}
    rows.update({m: [r["published"].get(m) for r in reports] for m in PUBLISHED})
    complete = {c: r["complete"] for c, r in zip(cols, reports, strict=True)}
    summary = {"benchmarks": cols, "rows": rows, "complete": complete}
    atomic_write_json(out / "summary.json", summary)
    md = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {m} | " + " | ".join(_fmt(v) for v in vals) + " |" for m, vals in rows.items()]
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    scaled = {m: [None if v is None else (v / 10 if r["scale"] == 1000.0 else v)
                  for v, r in zip(vals, reports, strict=True)] for m, vals in rows.items()}
    draw_bar_chart(out / "summary.png", "Eagle2 benchmarks (OCRBench / 10)", cols, scaled)
    return summary
