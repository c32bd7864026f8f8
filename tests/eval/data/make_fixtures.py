"""Writes the tiny benchmark fixtures in this folder, each in its benchmark's released file format.

Images are generated (text and shapes drawn with PIL), never taken from the benchmarks. Rerun with
``python tests/eval/data/make_fixtures.py`` after changing it; the outputs are committed.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def picture(text: str, size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (240, 240, 230),
            bars: list[int] | None = None) -> Image.Image:
    img = Image.new("RGB", size, colour)
    d = ImageDraw.Draw(img)
    if bars:
        w = size[0] // (len(bars) + 1)
        for i, h in enumerate(bars):
            d.rectangle([w * (i + 0.5), size[1] - 4 - h, w * (i + 1.3), size[1] - 4], fill=(60, 90 + 30 * i, 200))
    d.text((3, 3), text, fill=(0, 0, 0))
    return img


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_tsv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows)


def docvqa() -> None:
    d = HERE / "docvqa"
    save(picture("INVOICE 42\nTotal: $310", (64, 64)), d / "documents" / "doc_a.png")
    save(picture("MEMO\nDate: 1998", (48, 64)), d / "documents" / "doc_b.png")
    write_json(d / "val_v1.0_withQT.json", {
        "dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0",
        "data": [
            {"questionId": 101, "question": "What is the invoice number?", "question_types": ["form"],
             "image": "documents/doc_a.png", "docId": 1, "ucsf_document_id": "aa01", "ucsf_document_page_no": "1",
             "answers": ["42", "No. 42"], "data_split": "val"},
            {"questionId": 102, "question": "What is the total?", "question_types": ["table/list"],
             "image": "documents/doc_a.png", "docId": 1, "ucsf_document_id": "aa01", "ucsf_document_page_no": "1",
             "answers": ["$310"], "data_split": "val"},
            {"questionId": 103, "question": "What is the date on the memo?", "question_types": ["form"],
             "image": "documents/doc_b.png", "docId": 2, "ucsf_document_id": "bb02", "ucsf_document_page_no": "1",
             "answers": ["1998"], "data_split": "val"},
        ]})


def infovqa() -> None:
    d = HERE / "infovqa"
    save(picture("65% of users\nlike tea", (64, 64)), d / "infographicsvqa_images" / "10001.jpeg", quality=95)
    write_json(d / "infographicsVQA_val_v1.0_withQT.json", {
        "dataset_name": "infographicVQA", "dataset_version": "1.0", "dataset_split": "val",
        "data": [
            {"questionId": 65001, "question": "What share of users like tea?", "image_local_name": "10001.jpeg",
             "image_url": "", "ocr_output_file": "10001.json", "answers": ["65%", "65"],
             "data_split": "val", "answer_type": ["single span"], "evidence": ["text"], "operation/reasoning": []},
            {"questionId": 65002, "question": "What do users like?", "image_local_name": "10001.jpeg",
             "image_url": "", "ocr_output_file": "10001.json", "answers": ["tea"],
             "data_split": "val", "answer_type": ["single span"], "evidence": ["text"], "operation/reasoning": []},
        ]})


def chartqa() -> None:
    d = HERE / "chartqa"
    save(picture("sales", (64, 64), bars=[20, 35, 50]), d / "png" / "chart_1.png")
    save(picture("share %", (64, 64), bars=[40, 10]), d / "png" / "chart_2.png")
    write_json(d / "test_human.json", [
        {"imgname": "chart_1.png", "query": "What is the highest value?", "label": "50"},
        {"imgname": "chart_1.png", "query": "Which bar is the lowest, first or last?", "label": "First"},
        {"imgname": "chart_2.png", "query": "What share does the first group have?", "label": "40"},
    ])


def textvqa() -> None:
    d = HERE / "textvqa"
    save(picture("STOP", (64, 64), colour=(200, 30, 30)), d / "train_images" / "0a1b2c3d4e.jpg", quality=95)
    write_json(d / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": 0.51,
        "data": [
            {"question": "what does the sign say?", "image_id": "0a1b2c3d4e", "image_classes": ["sign"],
             "flickr_original_url": "", "flickr_300k_url": "", "image_width": 64, "image_height": 64,
             "answers": ["stop"] * 8 + ["stop sign", "halt"], "question_tokens": ["what", "does", "the", "sign", "say"],
             "question_id": 34602, "set_name": "val"},
            {"question": "what colour is the sign?", "image_id": "0a1b2c3d4e", "image_classes": ["sign"],
             "flickr_original_url": "", "flickr_300k_url": "", "image_width": 64, "image_height": 64,
             "answers": ["red"] * 6 + ["Red", "red.", "dark red", "orange"], "question_tokens": [],
             "question_id": 34603, "set_name": "val"},
        ]})


def ocrbench() -> None:
    d = HERE / "ocrbench"
    save(picture("HELLO", (64, 32)), d / "OCRBench_Images" / "IIIT5K" / "1_1.png")
    save(picture("x^2+1", (64, 32)), d / "OCRBench_Images" / "HME100k" / "train_1.jpg", quality=95)
    save(picture("OPEN 9-5", (64, 64)), d / "OCRBench_Images" / "textVQA" / "abc.jpg", quality=95)
    write_json(d / "OCRBench.json", [
        {"dataset_name": "IIIT5K", "id": 0, "image_path": "IIIT5K/1_1.png", "question": "what is written in the image?",
         "answers": ["HELLO"], "type": "Regular Text Recognition"},
        {"dataset_name": "HME100k", "id": 1, "image_path": "HME100k/train_1.jpg",
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answers": "x ^ { 2 } + 1", "type": "Handwritten Mathematical Expression Recognition"},
        {"dataset_name": "textVQA", "id": 2, "image_path": "textVQA/abc.jpg", "question": "when does the shop open?",
         "answers": ["9", "9-5"], "type": "Scene Text-centric VQA"},
    ])


def ai2d() -> None:
    rows = [
        {"index": 0, "question": "Which stage comes after the egg?", "A": "larva", "B": "adult", "C": "pupa",
         "D": "egg", "answer": "A", "category": "life cycles", "image": b64(picture("egg->larva", (64, 64)))},
        {"index": 1, "question": "What eats the grass?", "A": "hawk", "B": "rabbit", "C": "sun", "D": "",
         "answer": "B", "category": "food chains", "image": b64(picture("grass rabbit", (64, 64)))},
    ]
    write_tsv(HERE / "ai2d" / "AI2D_TEST.tsv", rows)


def scienceqa() -> None:
    d = HERE / "scienceqa"
    base = {"lecture": "", "solution": "", "grade": "grade4", "topic": "physics", "category": "Magnets",
            "skill": "magnets", "task": "closed choice"}
    problems = {
        "7": {**base, "question": "Will these magnets attract or repel?", "choices": ["attract", "repel"],
              "answer": 1, "hint": "Two magnets are shown.", "image": "image.png", "subject": "natural science",
              "split": "test"},
        "12": {**base, "question": "Which is a mammal?", "choices": ["shark", "whale", "tuna"], "answer": 1,
               "hint": "", "image": "image.png", "subject": "natural science", "split": "test"},
        "15": {**base, "question": "Which word rhymes with cat?", "choices": ["hat", "dog"], "answer": 0, "hint": "",
               "image": None, "subject": "language science", "split": "test"},
        "20": {**base, "question": "Which is heavier?", "choices": ["rock", "feather"], "answer": 0, "hint": "",
               "image": "image.png", "subject": "natural science", "split": "train"},
    }
    for pid in ("7", "12"):
        save(picture(f"Q{pid}", (64, 64)), d / "images" / "test" / pid / "image.png")
    save(picture("Q20", (64, 64)), d / "images" / "train" / "20" / "image.png")
    write_json(d / "problems.json", problems)
    write_json(d / "pid_splits.json", {"test": ["7", "12", "15"], "train": ["20"]})


def mmstar() -> None:
    q1 = "Which shape is shown?\nOptions: A: circle, B: square, C: triangle, D: star"
    rows = [
        {"index": 0, "question": q1, "answer": "B", "category": "coarse perception", "l2_category": "image style",
         "image": b64(picture("[ ]", (64, 64))), "bench": "MMBench", "A": "circle", "B": "square", "C": "triangle",
         "D": "star"},
        {"index": 1, "question": "How many dots are there?", "answer": "C", "category": "instance reasoning",
         "l2_category": "counting", "image": b64(picture("...", (64, 64))), "bench": "SEEDBench_IMG", "A": "1",
         "B": "2", "C": "3", "D": "4"},
    ]
    write_tsv(HERE / "mmstar" / "MMStar.tsv", rows)


def mmbench() -> None:
    img1, img2 = b64(picture("cat", (64, 64))), b64(picture("sun", (64, 64)))
    opts = ["cat", "dog", "bird", "fish"]
    rows = []
    # Question 3 ships with its circular copies (index + k * 1e6, options rotated, image given by reference).
    for k in range(4):
        rot = opts[k:] + opts[:k]
        rows.append({"index": 3 + k * 1_000_000, "question": "Which animal is shown?", "hint": "",
                     "A": rot[0], "B": rot[1], "C": rot[2], "D": rot[3], "answer": "ABCD"[(0 - k) % 4],
                     "category": "object_localization", "image": img1 if k == 0 else "3", "source": "fixture",
                     "l2-category": "fine-grained perception", "comment": "", "split": "dev"})
    # Question 8 has no copies: the loader adds the rotations.
    rows.append({"index": 8, "question": "Is it day or night?", "hint": "The sky is bright.", "A": "day",
                 "B": "night", "C": "", "D": "", "answer": "A", "category": "scene", "image": img2,
                 "source": "fixture", "l2-category": "coarse perception", "comment": "", "split": "dev"})
    write_tsv(HERE / "mmbench" / "MMBench_DEV_EN_V11.tsv", rows)


def mmmu() -> None:
    rows = [
        {"index": 0, "id": "validation_Art_1", "question": "<image 1> Which colour dominates?", "A": "red",
         "B": "blue", "C": "green", "D": "", "answer": "B", "category": "Art", "question_type": "multiple-choice",
         "split": "validation", "image": b64(picture("blue", (64, 64), colour=(40, 60, 220)))},
        {"index": 1, "id": "validation_Math_2", "question": "<image 1> <image 2> What is the sum of the two numbers?",
         "A": "", "B": "", "C": "", "D": "", "answer": "12", "category": "Math", "question_type": "open",
         "split": "validation",
         "image": json.dumps([b64(picture("5", (64, 64))), b64(picture("7", (64, 64)))])},
        {"index": 2, "id": "dev_Art_1", "question": "<image 1> Is this a painting?", "A": "yes", "B": "no", "C": "",
         "D": "", "answer": "A", "category": "Art", "question_type": "multiple-choice", "split": "dev",
         "image": b64(picture("art", (64, 64)))},
    ]
    write_tsv(HERE / "mmmu" / "MMMU_DEV_VAL.tsv", rows)


def mathvista() -> None:
    d = HERE / "mathvista"
    for i, text in ((1, "angle 40"), (2, "3 apples"), (3, "y=1.5x")):
        save(picture(text, (64, 64)), d / "images" / f"{i}.png")
    meta = {"split": "testmini", "source": "fixture", "context": "geometry diagram", "grade": "high school",
            "img_height": 64, "img_width": 64, "language": "english", "skills": ["algebraic reasoning"]}
    write_json(d / "annot_testmini.json", {
        "1": {"question": "What is the angle?", "image": "images/1.png", "choices": ["30", "40", "50", "60"],
              "unit": None, "precision": None, "answer": "40", "question_type": "multi_choice",
              "answer_type": "text", "pid": "1", "metadata": {**meta, "task": "geometry problem solving"},
              "query": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                       "at the end.\nQuestion: What is the angle?\nChoices:\n(A) 30\n(B) 40\n(C) 50\n(D) 60"},
        "2": {"question": "How many apples are there?", "image": "images/2.png", "choices": None, "unit": None,
              "precision": None, "answer": "3", "question_type": "free_form", "answer_type": "integer", "pid": "2",
              "metadata": {**meta, "task": "math word problem"},
              "query": "Hint: Please answer the question requiring an integer answer and provide the final value, "
                       "e.g., 1, 2, 3, at the end.\nQuestion: How many apples are there?"},
        "3": {"question": "What is the slope?", "image": "images/3.png", "choices": None, "unit": None,
              "precision": 1.0, "answer": "1.5", "question_type": "free_form", "answer_type": "float", "pid": "3",
              "metadata": {**meta, "task": "figure question answering"},
              "query": "Hint: Please answer the question requiring a floating-point number with one decimal place "
                       "and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\nQuestion: What is the slope?"},
    })


if __name__ == "__main__":
    for fn in (docvqa, infovqa, chartqa, textvqa, ocrbench, ai2d, scienceqa, mmstar, mmbench, mmmu, mathvista):
        fn()
        print(f"wrote {fn.__name__}")
