"""Quality filters for teacher replies: schema, length, language, answer consistency, near-duplicate removal.

Every expected sample ends in exactly one bucket (kept or the first filter that rejected it), so the counts
of the data card always add up to the number of samples asked for.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from nemo_eagle.eval.metrics import anls, normalize_vqa_answer, parse_number
from nemo_eagle.synth.imagehash import hamming
from nemo_eagle.synth.tasks import SchemaError, TaskTemplate

# Buckets in the order they are checked; "kept" is the rest.
REASONS = ("pending", "teacher_error", "schema", "length", "language", "consistency", "dedup")

# Scripts (first word of a character's Unicode name) accepted for each language.
LANGUAGE_SCRIPTS = {
    "en": {"LATIN"}, "de": {"LATIN"}, "fr": {"LATIN"}, "es": {"LATIN"}, "zh": {"CJK"},
    "ja": {"CJK", "HIRAGANA", "KATAKANA"}, "ko": {"HANGUL"}, "ru": {"CYRILLIC"}, "ar": {"ARABIC"},
}


@dataclass(kw_only=True)
class FilterConfig:
    language: str = "en"  # a key of LANGUAGE_SCRIPTS, or "any"
    min_script_ratio: float = 0.9  # share of letters that must be in the language's script
    min_question_chars: int = 8
    max_question_chars: int = 500
    max_answer_chars: int = 2000
    min_caption_chars: int = 20
    max_caption_chars: int = 4000
    min_reasoning_chars: int = 20
    verify: bool = True  # check answers against the verifier call
    dedup_bits: int = 4  # images whose perceptual hashes differ in at most this many bits are near-duplicates

    def __post_init__(self) -> None:
        if self.language != "any" and self.language not in LANGUAGE_SCRIPTS:
            raise ValueError(f"unknown language {self.language!r}; choose 'any' or one of {sorted(LANGUAGE_SCRIPTS)}")
        if not 0 <= self.dedup_bits < 32:
            raise ValueError(f"dedup_bits must be in [0, 32), got {self.dedup_bits}")


@dataclass
class Verdict:
    reason: str | None  # None: kept
    detail: str = ""
    fields: dict[str, str] | None = None


def script_ratio(text: str, scripts: set[str]) -> float:
    """Share of the letters of ``text`` that belong to ``scripts`` (1.0 when there are no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    inside = sum(unicodedata.name(c, "UNKNOWN").split(" ")[0] in scripts for c in letters)
    return inside / len(letters)


def answers_agree(answer: str, check: str) -> bool:
    """Whether a verifier's answer confirms the generated one: the same after VQA normalisation, numbers within
    5%, one's words contained in the other's, or an ANLS of at least 0.8."""
    a, b = normalize_vqa_answer(answer), normalize_vqa_answer(check)
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pc = parse_number(answer), parse_number(check)
    if pa is not None and pc is not None:  # lenient on purpose: units, currency and separators are ignored
        if pa[0] == 0.0:
            return pc[0] == 0.0
        return abs(pc[0] - pa[0]) / abs(pa[0]) <= 0.05
    wa, wb = set(a.split()), set(b.split())
    if wa <= wb or wb <= wa:
        return True
    return anls(check, [answer]) >= 0.8


def check_sample(record: dict[str, Any] | None, template: TaskTemplate, cfg: FilterConfig) -> Verdict:
    """Every filter but dedup, in the order of REASONS."""
    if record is None:
        return Verdict("pending", "no reply yet (the teacher failed or the run was stopped)")
    if record.get("status") != "ok":
        return Verdict("teacher_error", str(record.get("error", "")))
    try:
        fields = template.parse(record["response"])
    except SchemaError as e:
        return Verdict("schema", str(e))
    question, answer = template.question(fields), template.answer(fields)
    if template.human is None and not cfg.min_question_chars <= len(question) <= cfg.max_question_chars:
        return Verdict("length", f"question has {len(question)} chars", fields)
    if "caption" in fields:
        if not cfg.min_caption_chars <= len(answer) <= cfg.max_caption_chars:
            return Verdict("length", f"caption has {len(answer)} chars", fields)
    elif len(answer) > cfg.max_answer_chars:
        return Verdict("length", f"answer has {len(answer)} chars", fields)
    if "reasoning" in fields and len(fields["reasoning"]) < cfg.min_reasoning_chars:
        return Verdict("length", f"reasoning has {len(fields['reasoning'])} chars", fields)
    text = question + "\n" + answer
    if "\ufffd" in text or any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text):
        return Verdict("language", "control or replacement characters", fields)
    if cfg.language != "any":
        ratio = script_ratio(text, LANGUAGE_SCRIPTS[cfg.language])
        if ratio < cfg.min_script_ratio:
            return Verdict("language", f"only {ratio:.0%} of letters in the {cfg.language} script", fields)
    if cfg.verify and template.verify:
        if record.get("verify") is None:
            return Verdict("consistency", f"no verifier answer ({record.get('verify_error', 'not asked')})", fields)
        if not answers_agree(fields["answer"], record["verify"]):
            return Verdict("consistency", f"verifier answered {record['verify'][:80]!r}", fields)
    return Verdict(None, "", fields)


def normalise_text(text: str) -> str:
    """Lowercase, punctuation dropped, whitespace collapsed: the text half of the dedup key."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


class NearDuplicateIndex:
    """Groups images whose 64-bit perceptual hashes are within ``bits`` of an earlier group's first image.

    Pigeonhole banding: two hashes within ``bits`` agree exactly on at least one of ``bits + 1`` bands, so only
    images sharing a band are compared.
    """

    def __init__(self, bits: int):
        self.bits = bits
        self.num_bands = bits + 1
        self._bands: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(self.num_bands)]
        self._reps: list[int] = []  # representative hash per group

    def _band_values(self, h: int) -> list[int]:
        out = []
        for b in range(self.num_bands):
            lo, hi = 64 * b // self.num_bands, 64 * (b + 1) // self.num_bands
            out.append((h >> lo) & ((1 << (hi - lo)) - 1))
        return out

    def group(self, h: int) -> int:
        """The group id of a hash; a new group when no earlier group is close enough."""
        bands = self._band_values(h)
        candidates = sorted({g for b, v in enumerate(bands) for g in self._bands[b].get(v, ())})
        for g in candidates:
            if hamming(self._reps[g], h) <= self.bits:
                return g
        g = len(self._reps)
        self._reps.append(h)
        for b, v in enumerate(bands):
            self._bands[b][v].append(g)
        return g


class Deduper:
    """Drops a sample whose image is a near-duplicate of an earlier kept sample's image and whose normalised
    question and answer are the same as that sample's."""

    def __init__(self, bits: int):
        self.index = NearDuplicateIndex(bits)
        self._groups: dict[str, int] = {}
        self._seen: dict[tuple[int, str], str] = {}

    def add_image(self, sha256: str, perceptual_hash: int) -> None:
        if sha256 not in self._groups:
            self._groups[sha256] = self.index.group(perceptual_hash)

    def check(self, sample_id: str, image_sha256: str, question: str, answer: str) -> str | None:
        """None if new (and remembered), else the id of the sample it duplicates."""
        key = (self._groups[image_sha256], normalise_text(question), normalise_text(answer))
        if key in self._seen:
            return self._seen[key]
        self._seen[key] = sample_id
        return None
