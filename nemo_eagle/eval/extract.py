"""Answer extraction from free-form model output: option letters (MCQ), MMMU open answers, MathVista answers.

Rule-based and deterministic (the official MMMU scorer picks a random option when nothing parses, MathVista's
asks GPT-4 to extract; here an unparsable answer is simply wrong).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence

from nemo_eagle.eval.metrics import levenshtein

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_NUM = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s.%-]", " ", str(text).lower()).split()).strip(" .")


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """The option letter a prediction picks, or None.

    Tried in order: a leading letter (``"B"``, ``"(B) ..."``, ``"B. cat"``); ``answer is B`` / ``Answer: B``; a
    single option letter standing alone; the text of exactly one option.
    """
    text = str(prediction).strip()
    letters = set(options)
    alone = {x for x in re.findall(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])", text) if x in letters}
    m = re.match(r"^\(?([A-Z])(?:[).:,]|\s|$)", text)
    if m and m.group(1) in letters and alone == {m.group(1)}:
        return m.group(1)
    m = re.search(r"answer\s*(?:is|:)?\s*:?\s*\(?([A-Z])\b(?![a-z'])", text, flags=re.IGNORECASE)
    if m and m.group(1).upper() in letters and (m.group(1).isupper() or len(text) < 40):
        return m.group(1).upper()
    if len(alone) == 1:
        return alone.pop()
    p = _norm(text)
    hits = [k for k, v in options.items() if _norm(v) and re.search(rf"(?<!\w){re.escape(_norm(v))}(?!\w)", p)]
    if len(hits) > 1:  # "red" inside "dark red": keep the longest option text
        longest = max(len(_norm(options[k])) for k in hits)
        hits = [k for k in hits if len(_norm(options[k])) == longest]
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------------------------------------- MMMU
def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def mmmu_open_candidates(prediction: str) -> list[str | float]:
    """Candidate answers of an open MMMU question, as the official parser finds them: the text after an answer
    indicator in the last sentences, every number in it (as floats), and the normalised strings."""
    text = str(prediction).strip().strip(".").lower()
    sentences = [s for s in re.split(r"\.\s(?=[A-Za-z])|\n", text) if s.strip()]
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys: list[str] = []
    for i, sent in enumerate(sentences):
        best = None
        for ind in indicators + (["="] if i == len(sentences) - 1 else []):
            if ind in sent:
                piece = sent.split(ind)[-1].strip()
                if best is None or len(piece) < len(best):
                    best = piece
        if best and best not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(best)
    if not keys:
        keys = [text]
    out: list[str | float] = []
    for k in keys:
        out += [n for n in (_to_number(x) for x in re.findall(_NUM, k)) if n is not None]
        out.append(k.strip().strip(".").strip())
    return list(dict.fromkeys(out))


def mmmu_open_correct(prediction: str, answers: Sequence[str]) -> bool:
    cands = mmmu_open_candidates(prediction)
    for gt in answers:
        num = _to_number(str(gt).strip())
        if num is not None:
            if any(isinstance(c, float) and round(c, 2) == round(num, 2) for c in cands):
                return True
        else:
            g = str(gt).strip().lower().strip(".")
            if any(isinstance(c, str) and g in c for c in cands):
                return True
    return False


# -------------------------------------------------------------------------------------------- MathVista
def mathvista_extract(prediction: str, question_type: str, answer_type: str, choices: Sequence[str] | None,
                      precision: int | None) -> str:
    """The answer string MathVista compares against its ground truth (same normalisation as the official
    ``normalize_extracted_answer``: letters map to choices, otherwise the most similar choice; numbers rounded)."""
    text = str(prediction).strip()
    m = re.search(r"(?:answer|Answer)\s*(?:is|:)\s*:?\s*(.+)", text)
    core = m.group(1).strip().rstrip(".") if m else text
    if question_type == "multi_choice":
        choices = list(choices or [])
        if not choices:
            return core
        letter = extract_choice(core, {LETTERS[i]: c for i, c in enumerate(choices)})
        if letter is not None:
            return choices[LETTERS.index(letter)]
        return min(choices, key=lambda c: levenshtein(core.lower(), str(c).lower()))
    if answer_type in ("integer", "float"):
        nums = re.findall(_NUM, core) or re.findall(_NUM, text)
        if not nums:
            return core
        value = float(nums[-1].replace(",", ""))
        if answer_type == "integer":
            return str(int(round(value)))
        return str(round(value, int(precision or 0)))
    if answer_type == "list":
        m = re.search(r"\[[^\]]*\]", core)
        if m:
            try:
                return str(ast.literal_eval(m.group(0)))
            except (ValueError, SyntaxError):
                pass
        return core
    return core


def mathvista_correct(extracted: str, answer: str, answer_type: str, precision: int | None) -> bool:
    if answer_type == "integer":
        try:
            return int(float(extracted)) == int(float(answer))
        except ValueError:
            return False
    if answer_type == "float":
        try:
            return round(float(extracted), int(precision or 0)) == round(float(answer), int(precision or 0))
        except ValueError:
            return False
    return str(extracted).strip().lower() == str(answer).strip().lower()
