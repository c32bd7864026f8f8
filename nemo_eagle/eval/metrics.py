"""Benchmark metrics as the official scorers compute them: ANLS (DocVQA RRC), ChartQA relaxed accuracy, VQA accuracy.

Each function returns a float in [0, 1] for one question; benchmarks average them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# ---------------------------------------------------------------------------------------------------- ANLS


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each costs 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _anls_normalise(text: str) -> str:
    # The RRC scorer lowercases and strips; runs of inner whitespace collapse to one space.
    return " ".join(str(text).strip().lower().split())


def _as_answers(answers: str | Sequence[str]) -> list[str]:
    if isinstance(answers, str):
        return [answers]
    answers = [str(a) for a in answers]
    if not answers:
        raise ValueError("no reference answers given: a question needs at least one ground-truth answer")
    return answers


def anls(prediction: str, answers: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity of one prediction against its answers (best answer counts).

    ``1 - NL`` where ``NL = edit distance / max(len)``; an ``NL`` above ``threshold`` scores 0 (so a similarity of
    exactly 0.5 is kept, as in the DocVQA RRC scorer). Two empty strings are identical (similarity 1).
    """
    pred = _anls_normalise(prediction)
    best = 0.0
    for answer in _as_answers(answers):
        gt = _anls_normalise(answer)
        longest = max(len(gt), len(pred))
        dist = levenshtein(gt, pred) / longest if longest else 0.0
        best = max(best, 0.0 if dist > threshold else 1.0 - dist)
    return best


# ---------------------------------------------------------------------------------------- relaxed accuracy
_CURRENCY = "$€£¥₹"
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def parse_number(text: str) -> tuple[float, str] | None:
    """``"$1,234.5 million"`` -> ``(1234.5, "million")``; ``"45%"`` -> ``(45.0, "%")``; not a number -> None.

    A leading currency sign, thousands separators, a trailing period and one trailing unit word are accepted.
    """
    s = str(text).strip().rstrip(".").strip()
    s = s.lstrip(_CURRENCY).strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(\D|$))", "", s)  # 1,234,567 -> 1234567
    unit = ""
    if s.endswith("%"):
        s, unit = s[:-1].strip(), "%"
    else:
        m = re.match(r"^(\S+)\s*([A-Za-z][A-Za-z./]*)$", s)  # "12 kg", "12kg", "3.5 million"
        if m and _NUMBER.match(m.group(1)):
            s, unit = m.group(1), m.group(2).lower()
    s = s.rstrip(_CURRENCY)
    if not _NUMBER.match(s):
        return None
    return float(s), unit


def _official_float(text: str) -> float | None:
    """The ChartQA scorer's number reading: ``float(text)``, with a trailing ``%`` meaning a fraction."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, target: str, tolerance: float = 0.05) -> float:
    """ChartQA relaxed accuracy, as the official scorer (Pix2Struct's ``relaxed_correctness``) computes it.

    When both sides read as numbers (Python ``float``; ``"45%"`` reads as 0.45) and the target is non-zero, the
    relative error must be at most ``tolerance``; otherwise the strings must match case-insensitively. So
    ``"45"`` vs ``"45%"`` is wrong, ``"$1,200"`` or ``"12 kg"`` only match the identical string, and a target of 0
    is compared as text (``"0.0"`` != ``"0"``). Surrounding whitespace is ignored.
    """
    p, t = str(prediction).strip(), str(target).strip()
    pv, tv = _official_float(p), _official_float(t)
    if pv is not None and tv:
        return float(abs(pv - tv) / abs(tv) <= tolerance)
    return float(p.lower() == t.lower())


# -------------------------------------------------------------------------------------------- VQA accuracy
# The answer normalisation of the VQA / TextVQA evaluation (EvalAI answer processor).
_CONTRACTIONS = {
    w.replace("'", ""): w
    for w in (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't "
        "he'd he'd've he'll he's how'd how'll how's i'd i'd've i'll i'm i've isn't it'd it'd've it'll it's let's "
        "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd "
        "she'd've she'll she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's "
        "someone'd someone'd've someone'll someone's something'd something'd've something'll thats there'd "
        "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd we'd've we'll "
        "we're we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
        "who'll who're who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
        "y'all'd've you'd you'd've you'll you're you've"
    ).split()
}
_CONTRACTIONS["thats"] = "that's"
# The official table also maps forms with the apostrophe in the wrong place.
_CONTRACTIONS.update({"couldnt've": "couldn't've", "couldn'tve": "couldn't've", "hadnt've": "hadn't've",
                      "hadn'tve": "hadn't've", "hed've": "he'd've", "he'dve": "he'd've", "id've": "i'd've",
                      "i'dve": "i'd've", "im": "i'm", "ive": "i've", "wont": "won't", "youll": "you'll"})
_DIGITS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_vqa_answer(text: str) -> str:
    """Lowercase; drop punctuation (or turn it into a space), articles; number words -> digits; fix contractions."""
    s = str(text).lower().replace("\n", " ").replace("\t", " ").strip()
    s = s.replace(",", "").replace("?", "").replace("'s", " 's").strip()
    out = s
    for p in _PUNCT:
        if (p + " " in s or " " + p in s) or _COMMA_STRIP.search(s) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_DIGITS.get(w, w) for w in out.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy: ``min(#annotators matching / 3, 1)``, averaged over the leave-one-out subsets of the
    (usually 10) annotator answers. Prediction and answers are normalised first. With a single reference answer
    (no subsets to leave one out of) it is an exact match after normalisation."""
    gts = [normalize_vqa_answer(a) for a in _as_answers(answers)]
    pred = normalize_vqa_answer(prediction)
    if len(gts) == 1:
        return float(gts[0] == pred)
    matches = sum(g == pred for g in gts)
    # Leaving out annotator i removes one match exactly when annotator i matched.
    total = sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts)
    return total / len(gts)
