"""Metrics and answer extraction against hand-computed values."""

from __future__ import annotations

import pytest

from nemo_eagle.eval.extract import extract_choice, mathvista_correct, mathvista_extract, mmmu_open_correct
from nemo_eagle.eval.metrics import anls, levenshtein, normalize_vqa_answer, relaxed_accuracy, vqa_accuracy


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("", "abc", 3), ("kitten", "sitting", 3), ("abcd", "abce", 1),
                                     ("flaw", "lawn", 2)])
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


@pytest.mark.parametrize("pred, answers, expected", [
    ("42", ["42"], 1.0),
    ("  HeLLo   World ", ["hello world"], 1.0),  # lowercase, strip, inner whitespace collapsed
    ("abce", ["abcd"], 0.75),  # 1 edit / 4
    ("ab", ["abcd"], 0.5),  # NL exactly 0.5: kept
    ("abc", ["abcdefg"], 0.0),  # NL 4/7 > 0.5: zero
    ("a", ["abcd"], 0.0),  # NL 0.75
    ("abce", ["xyz", "abcd", "abcf"], 0.75),  # best answer counts
    ("", ["abc"], 0.0),  # empty prediction
    ("", [""], 1.0),  # both empty
    ("No. 42", "no. 42", 1.0),  # a single answer string
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


def test_anls_threshold_boundary_is_inclusive():
    # "abcdef" vs "abcxyz": 3 edits / 6 = 0.5 -> 0.5; "abcdef" vs "abwxyz": 4 / 6 -> 0
    assert anls("abcxyz", ["abcdef"]) == 0.5
    assert anls("abwxyz", ["abcdef"]) == 0.0
    with pytest.raises(ValueError, match="no reference answers"):
        anls("x", [])


@pytest.mark.parametrize("pred, target, expected", [
    # worked by hand from the official rule: float() both sides ("x%" -> x/100), non-zero target -> |p-t|/|t| <= 5%,
    # otherwise case-insensitive string equality
    ("50", "50", 1.0),
    ("52.5", "50", 1.0),  # exactly 5% off
    ("52.6", "50", 0.0),
    ("47.5", "50", 1.0),
    ("104", "100", 1.0),
    ("106", "100", 0.0),
    ("1e2", "100", 1.0),  # float() reads it
    ("45%", "45", 0.0),  # 0.45 vs 45
    ("0.45", "45%", 1.0),  # the scorer reads 45% as 0.45
    ("45", "45%", 0.0),
    ("46%", "45%", 1.0),  # 2.2% off
    ("50%", "45%", 0.0),
    ("$1,200", "1200", 0.0),  # not a float: compared as text
    ("$1,200", "$1,200", 1.0),
    ("12 kg", "12", 0.0),
    ("12.", "12", 1.0),  # float("12.") == 12
    ("0", "0", 1.0),  # a zero target is compared as text
    ("0.0", "0", 0.0),
    ("0.01", "0", 0.0),
    ("Yes", "yes", 1.0),  # text: case-insensitive exact match
    (" Asia ", "asia", 1.0),
    ("Asia.", "Asia", 0.0),  # text is exact
    ("", "", 1.0),
    ("", "5", 0.0),
    ("five", "5", 0.0),
])
def test_relaxed_accuracy(pred, target, expected):
    assert relaxed_accuracy(pred, target) == expected


def test_vqa_accuracy_leave_one_out():
    # m annotators agree with the prediction: ((m * min(1, (m-1)/3)) + (10 - m) * min(1, m/3)) / 10
    for m, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["cat"] * m + ["dog"] * (10 - m)
        assert vqa_accuracy("cat", answers) == pytest.approx(expected), m


@pytest.mark.parametrize("pred, answer", [
    ("Two", "2"),  # number words
    ("the dog.", "dog"),  # articles, final period
    ("A Dog", "dog"),  # case
    ("dont", "don't"),  # contractions
    ("yes!", "yes"),  # punctuation
    ("1,000", "1000"),  # comma between digits
    ("red, blue", "red blue"),
])
def test_vqa_normalisation(pred, answer):
    assert normalize_vqa_answer(pred) == normalize_vqa_answer(answer)
    assert vqa_accuracy(pred, [answer] * 10) == 1.0


def test_vqa_accuracy_edge_cases():
    assert vqa_accuracy("", ["cat"] * 10) == 0.0
    assert vqa_accuracy("", [""] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("3.5", ["3.5"] * 10) == 1.0  # the decimal point survives
    assert vqa_accuracy("cat", ["cat"]) == 1.0  # one reference: exact match after normalisation
    with pytest.raises(ValueError, match="no reference answers"):
        vqa_accuracy("cat", [])


OPTS = {"A": "red", "B": "dark red", "C": "blue", "D": "green"}


@pytest.mark.parametrize("pred, expected", [
    ("B", "B"), ("(C)", "C"), ("D. green", "D"), ("C) blue", "C"), ("b", None),
    ("The answer is C.", "C"), ("Answer: D", "D"), ("I think (A) is right", "A"),
    ("blue", "C"), ("It is dark red.", "B"),  # the longest matching option text wins over "red"
    ("E", None), ("purple", None), ("A or C", None), ("", None),
])
def test_extract_choice(pred, expected):
    assert extract_choice(pred, OPTS) == expected


def test_mmmu_open_answers():
    assert mmmu_open_correct("The sum is 12.", ["12"])
    assert mmmu_open_correct("12.00", ["12"])
    assert mmmu_open_correct("so the answer is 1,200", ["1200"])
    assert not mmmu_open_correct("The sum is 13.", ["12"])
    assert mmmu_open_correct("Therefore the material is copper", ["copper"])
    assert not mmmu_open_correct("iron", ["copper"])


def test_mathvista_extraction():
    choices = ["30", "40", "50", "60"]
    assert mathvista_extract("B", "multi_choice", "text", choices, None) == "40"
    assert mathvista_extract("The answer is (C)", "multi_choice", "text", choices, None) == "50"
    assert mathvista_extract("around 61 degrees", "multi_choice", "text", choices, None) == "60"  # most similar
    assert mathvista_extract("There are 3 apples.", "free_form", "integer", None, None) == "3"
    assert mathvista_extract("slope = 1.46", "free_form", "float", None, 1) == "1.5"
    assert mathvista_extract("Answer: [1, 2]", "free_form", "list", None, None) == "[1, 2]"
    assert mathvista_correct("3", "3", "integer", None)
    assert not mathvista_correct("4", "3", "integer", None)
    assert mathvista_correct("1.5", "1.5", "float", 1)
    assert not mathvista_correct("x", "3", "integer", None)
