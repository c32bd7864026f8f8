"""Benchmark adapters: read each benchmark's released file format into ``Item``s, build prompts, score answers.

Defaults follow NVIDIA's Eagle2 evaluation protocol (EAGLE2_SPEC.md): 6 tiles unless stated (12 ChartQA/MMMU,
18 DocVQA, 24 InfoVQA/OCRBench), 2x bilinear upscaling before tiling except MathVista, AI2D and InfoVQA.
Formats: DocVQA/InfoVQA/TextVQA ``{"data": [...]}`` JSON, ChartQA ``test_*.json`` lists, OCRBench.json,
ScienceQA ``problems.json``, MathVista ``annot_testmini.json``, and VLMEvalKit TSVs (base64 images) for
AI2D, MMStar, MMBench and MMMU.
"""

from __future__ import annotations

import ast
import base64
import csv
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nemo_eagle.eval import extract
from nemo_eagle.eval.metrics import anls, relaxed_accuracy, vqa_accuracy

SHORT_ANSWER = "Answer the question using a single word or phrase."
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


class DataError(ValueError):
    """A benchmark file that does not have the expected format."""


@dataclass
class Item:
    id: str
    prompt: str  # the text turn (images go before it)
    images: list[Path | bytes]
    answers: list[str]
    meta: dict[str, Any] = field(default_factory=dict)  # category, options, question type, circular group...


@dataclass(frozen=True)
class Benchmark:
    name: str
    metric: str
    loader: Callable[[Path, Path, str | None], list[Item]]
    scorer: Callable[[str, Item], tuple[float, str]]  # -> (score in [0, 1], what was extracted)
    max_tiles: int = 6
    upscale: bool = True
    max_new_tokens: int = 32
    scale: float = 100.0  # reported score = mean * scale (OCRBench: points out of 1000)
    published_key: str | None = None  # column of the published Eagle2 table
    circular: bool = False  # MMBench: a question counts only if every rotation of its options is right
    category_key: str = "category"


# ----------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def _records(path: Path, key: str = "data") -> list[dict]:
    data = _read_json(path)
    if isinstance(data, dict):
        if key not in data:
            raise DataError(f"{path}: expected a JSON object with a {key!r} list, got keys {sorted(data)[:8]}")
        data = data[key]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of questions")
    return data


def _need(rec: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


def _find_image(root: Path, name: str, subdirs: tuple[str, ...] = ()) -> Path:
    for sub in ("", *subdirs):
        p = root / sub / name
        if p.is_file():
            return p
    raise DataError(f"image {name!r} not found under {root} (looked in: {', '.join(('.',) + subdirs)}); "
                    f"pass --image-root")


def _mcq_prompt(question: str, options: dict[str, str], hint: str | None = None) -> str:
    lines = [f"Hint: {hint}"] if hint else []
    lines.append(question)
    lines += [f"{k}. {v}" for k, v in options.items()]
    lines.append(MCQ_SUFFIX)
    return "\n".join(lines)


def read_tsv(path: Path) -> list[dict[str, str]]:
    """VLMEvalKit TSV rows (pandas ``to_csv(sep='\\t')`` quoting; base64 images can exceed csv's field limit)."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise DataError(f"{path}: no rows")
    _need(rows[0], ("index", "question", "answer", "image"), f"{path} (TSV header)")
    return rows


def _tsv_images(rows: list[dict[str, str]], path: Path) -> dict[str, list[bytes]]:
    """index -> decoded images; a short ``image`` value names the row whose image it reuses (VLMEvalKit)."""
    raw = {r["index"]: r["image"] for r in rows}
    out: dict[str, list[bytes]] = {}
    for idx, value in raw.items():
        if len(value) <= 64 and value in raw:
            value = raw[value]
        values = json.loads(value) if value.startswith("[") else [value]
        try:
            out[idx] = [base64.b64decode(v, validate=True) for v in values]
        except ValueError as e:
            raise DataError(f"{path}: row {idx}: image is not base64 ({e})") from e
    return out


def _tsv_options(row: dict[str, str]) -> dict[str, str]:
    return {k: row[k] for k in extract.LETTERS if row.get(k) not in (None, "", "nan")}


# ----------------------------------------------------------------------------------------------- loaders
def load_docvqa(path: Path, root: Path, split: str | None) -> list[Item]:
    items = []
    for i, r in enumerate(_records(path)):
        _need(r, ("questionId", "question", "image"), f"{path} record {i}")
        items.append(Item(str(r["questionId"]), f"{r['question']}\n{SHORT_ANSWER}", [_find_image(root, r["image"])],
                          list(r.get("answers", [])), {"category": ",".join(r.get("question_types", [])) or None}))
    return items


def load_infovqa(path: Path, root: Path, split: str | None) -> list[Item]:
    items = []
    for i, r in enumerate(_records(path)):
        _need(r, ("questionId", "question", "image_local_name"), f"{path} record {i}")
        img = _find_image(root, r["image_local_name"], ("infographicsvqa_images", "images"))
        items.append(Item(str(r["questionId"]), f"{r['question']}\n{SHORT_ANSWER}", [img], list(r.get("answers", [])),
                          {"category": r.get("answer_type", [None])[0] if r.get("answer_type") else None}))
    return items


def load_chartqa(path: Path, root: Path, split: str | None) -> list[Item]:
    items = []
    for i, r in enumerate(_records(path)):
        _need(r, ("imgname", "query", "label"), f"{path} record {i}")
        items.append(Item(f"{i}:{r['imgname']}", f"{r['query']}\n{SHORT_ANSWER}",
                          [_find_image(root, r["imgname"], ("png",))], [str(r["label"])], {"category": path.stem}))
    return items


def load_textvqa(path: Path, root: Path, split: str | None) -> list[Item]:
    items = []
    for i, r in enumerate(_records(path)):
        _need(r, ("question_id", "question", "image_id"), f"{path} record {i}")
        img = _find_image(root, f"{r['image_id']}.jpg", ("train_images", "test_images"))
        items.append(Item(str(r["question_id"]), f"{r['question']}\n{SHORT_ANSWER}", [img], list(r.get("answers", []))))
    return items


def load_ocrbench(path: Path, root: Path, split: str | None) -> list[Item]:
    items = []
    for i, r in enumerate(_records(path)):
        _need(r, ("id", "image_path", "question", "answers", "dataset_name", "type"), f"{path} record {i}")
        answers = r["answers"] if isinstance(r["answers"], list) else [r["answers"]]
        items.append(Item(str(r["id"]), r["question"], [_find_image(root, r["image_path"], ("OCRBench_Images",))],
                          [str(a) for a in answers], {"category": r["type"], "dataset_name": r["dataset_name"]}))
    return items


def load_mcq_tsv(path: Path, root: Path, split: str | None) -> list[Item]:
    """AI2D / MMStar / MMBench TSV: options in columns A, B, ...; MMStar may carry them in the question text."""
    rows = read_tsv(path)
    images = _tsv_images(rows, path)
    items = []
    for r in rows:
        if split and r.get("split") and r["split"] != split:
            continue
        options = _tsv_options(r)
        hint = r.get("hint") if r.get("hint") not in (None, "", "nan") else None
        inline = re.search(r"\n\s*Options:\s*(.*)$", r["question"], flags=re.DOTALL)  # MMStar style
        if inline:
            options = options or dict(re.findall(r"([A-Z]):\s*(.*?)\s*(?=,\s*[A-Z]:|$)", inline.group(1)))
            prompt = "\n".join(([f"Hint: {hint}"] if hint else []) + [r["question"], MCQ_SUFFIX])
        else:
            prompt = _mcq_prompt(r["question"], options, hint)
        if not options:
            raise DataError(f"{path}: row {r['index']} has no options (columns A, B, ... or 'Options:' in the text)")
        meta = {"category": r.get("category") or r.get("l2_category") or None, "options": options,
                "group": str(int(r["index"]) % 1_000_000), "question": r["question"], "hint": hint}
        items.append(Item(r["index"], prompt, images[r["index"]], [r["answer"].strip()], meta))
    return items


def load_mmmu(path: Path, root: Path, split: str | None) -> list[Item]:
    """MMMU TSV (``MMMU_DEV_VAL.tsv``): open questions have no options; ``<image k>`` tags stay in the text."""
    rows = read_tsv(path)
    images = _tsv_images(rows, path)
    split = split or "validation"
    items = []
    for r in rows:
        if r.get("split") and r["split"] != split:
            continue
        options = _tsv_options(r)
        qtype = r.get("question_type") or ("multiple-choice" if options else "open")
        if qtype == "multiple-choice":
            prompt = _mcq_prompt(r["question"], options)
        else:
            prompt = f"{r['question']}\n{SHORT_ANSWER}"
        answers = [r["answer"]]
        if r["answer"].startswith("["):
            answers = [str(a) for a in ast.literal_eval(r["answer"])]
        items.append(Item(r.get("id") or r["index"], prompt, images[r["index"]], answers,
                          {"category": r.get("category") or None, "options": options, "question_type": qtype}))
    return items


def load_scienceqa(path: Path, root: Path, split: str | None) -> list[Item]:
    """ScienceQA ``problems.json`` (pid -> problem); questions with an image in ``split`` (default test)."""
    problems = _read_json(path)
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected ScienceQA problems.json (an object of pid -> problem)")
    split = split or "test"
    items = []
    for pid, p in problems.items():
        _need(p, ("question", "choices", "answer", "split"), f"{path} problem {pid}")
        if p["split"] != split or not p.get("image"):
            continue
        options = {extract.LETTERS[i]: c for i, c in enumerate(p["choices"])}
        img = _find_image(root, f"{pid}/{p['image']}", (f"images/{split}", split))
        items.append(Item(pid, _mcq_prompt(p["question"], options, p.get("hint") or None), [img],
                          [extract.LETTERS[int(p["answer"])]], {"category": p.get("subject"), "options": options}))
    return items


def load_mathvista(path: Path, root: Path, split: str | None) -> list[Item]:
    """MathVista annotations (``annot_testmini.json``: pid -> record with ``query``, ``choices``, ...)."""
    data = _read_json(path)
    records = data.items() if isinstance(data, dict) else ((str(r.get("pid")), r) for r in data)
    items = []
    for pid, r in records:
        _need(r, ("query", "image", "answer", "question_type", "answer_type"), f"{path} problem {pid}")
        meta = {k: r.get(k) for k in ("question_type", "answer_type", "choices", "precision", "unit")}
        meta["category"] = (r.get("metadata") or {}).get("task")
        items.append(Item(str(pid), r["query"], [_find_image(root, r["image"])], [str(r["answer"])], meta))
    return items


# ------------------------------------------------------------------------------------------------ scorers
def score_anls(pred: str, item: Item) -> tuple[float, str]:
    return anls(pred, item.answers), pred


def score_relaxed(pred: str, item: Item) -> tuple[float, str]:
    return max(relaxed_accuracy(pred, a) for a in item.answers), pred


def score_vqa(pred: str, item: Item) -> tuple[float, str]:
    return vqa_accuracy(pred, item.answers), pred


def score_ocrbench(pred: str, item: Item) -> tuple[float, str]:
    """OCRBench: an answer counts when it appears inside the prediction (HME100k: spaces removed, case kept)."""
    if item.meta.get("dataset_name") == "HME100k":
        p = pred.strip().replace("\n", " ").replace(" ", "")
        hit = any(a.strip().replace("\n", " ").replace(" ", "") in p for a in item.answers)
    else:
        p = pred.lower().strip().replace("\n", " ")
        hit = any(a.lower().strip().replace("\n", " ") in p for a in item.answers)
    return float(hit), pred


def score_choice(pred: str, item: Item) -> tuple[float, str]:
    letter = extract.extract_choice(pred, item.meta["options"])
    return float(letter is not None and letter == item.answers[0].upper()), letter or ""


def score_mmmu(pred: str, item: Item) -> tuple[float, str]:
    if item.meta["question_type"] == "multiple-choice":
        return score_choice(pred, item)
    return float(extract.mmmu_open_correct(pred, item.answers)), pred


def score_mathvista(pred: str, item: Item) -> tuple[float, str]:
    m = item.meta
    got = extract.mathvista_extract(pred, m["question_type"], m["answer_type"], m.get("choices"), m.get("precision"))
    return float(extract.mathvista_correct(got, item.answers[0], m["answer_type"], m.get("precision"))), got


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("docvqa", "ANLS", load_docvqa, score_anls, max_tiles=18, published_key="DocVQA"),
        Benchmark("infovqa", "ANLS", load_infovqa, score_anls, max_tiles=24, upscale=False, published_key="InfoVQA"),
        Benchmark("chartqa", "relaxed accuracy", load_chartqa, score_relaxed, max_tiles=12, published_key="ChartQA"),
        Benchmark("textvqa", "VQA accuracy", load_textvqa, score_vqa, published_key="TextVQA"),
        Benchmark("ocrbench", "OCRBench score (of 1000)", load_ocrbench, score_ocrbench, max_tiles=24, scale=1000.0,
                  max_new_tokens=64, published_key="OCRBench"),
        Benchmark("ai2d", "accuracy", load_mcq_tsv, score_choice, upscale=False, max_new_tokens=8,
                  published_key="AI2D"),
        Benchmark("scienceqa", "accuracy", load_scienceqa, score_choice, max_new_tokens=8),
        Benchmark("mmstar", "accuracy", load_mcq_tsv, score_choice, max_new_tokens=8, published_key="MMStar"),
        Benchmark("mmbench", "circular accuracy", load_mcq_tsv, score_choice, max_new_tokens=8, published_key="MMB1.1",
                  circular=True),
        Benchmark("mmmu", "accuracy", load_mmmu, score_mmmu, max_tiles=12, max_new_tokens=64, published_key="MMMU"),
        Benchmark("mathvista", "accuracy", load_mathvista, score_mathvista, upscale=False, max_new_tokens=256,
                  published_key="MathVista"),
    )
}


def circular_expand(items: list[Item]) -> list[Item]:
    """MMBench circular evaluation: each question is asked once per rotation of its options.

    TSVs that already hold the rotated copies (index + k * 1e6, VLMEvalKit) are used as they are; a question
    without copies gets its rotations here (ids ``<index>@r<k>``).
    """
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.meta["group"], []).append(it)
    out = []
    for group in groups.values():
        out += group
        if len(group) > 1:
            continue
        base = group[0]
        letters, texts = list(base.meta["options"]), list(base.meta["options"].values())
        n = len(texts)
        answer = letters.index(base.answers[0].upper()) if base.answers[0].upper() in letters else None
        for k in range(1, n):
            options = {letters[i]: texts[(i + k) % n] for i in range(n)}
            ans = [letters[(answer - k) % n]] if answer is not None else base.answers
            out.append(Item(f"{base.id}@r{k}", _mcq_prompt(base.meta["question"], options, base.meta["hint"]),
                            base.images, ans, {**base.meta, "options": options}))
    return out


def get_benchmark(name: str) -> Benchmark:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def load_items(bench: Benchmark, data: Path, image_root: Path | None = None, split: str | None = None) -> list[Item]:
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data} does not exist")
    items = bench.loader(data, Path(image_root) if image_root else data.parent, split)
    if not items:
        raise DataError(f"{data}: no {bench.name} questions found" + (f" in split {split!r}" if split else ""))
    unanswered = [it.id for it in items if not any(str(a).strip() for a in it.answers)]
    if unanswered:
        raise DataError(f"{data}: {len(unanswered)} question(s) have no reference answers (e.g. {unanswered[:3]}); "
                        f"test splits without answers are scored by the benchmark's own server")
    if bench.circular:
        items = circular_expand(items)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DataError(f"{data}: question ids are not unique")
    return items
