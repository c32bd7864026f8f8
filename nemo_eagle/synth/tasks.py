"""Task templates for synthetic data: what the teacher is asked per image, and how its reply becomes a conversation.

Each template asks for one JSON object; ``parse`` checks the schema and ``to_conversation`` renders LLaVA turns.
A template's ``fingerprint`` enters the response-cache key, so editing a prompt never reuses stale answers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass


class SchemaError(ValueError):
    """The teacher's reply is not the JSON object the template asked for."""


@dataclass(frozen=True)
class TaskTemplate:
    name: str
    prompt: str  # sent after the image
    fields: tuple[str, ...]  # required string fields of the JSON reply
    human: str | None = None  # fixed human turn (caption); None: the generated "question"
    verify: bool = True  # re-ask the generated question and compare answers
    version: int = 1

    @property
    def fingerprint(self) -> str:
        blob = json.dumps([self.name, self.prompt, self.fields, self.human, self.version])
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def render(self, index: int, num_samples: int) -> str:
        """The prompt of sample ``index``; several samples per image are asked to differ."""
        if num_samples <= 1:
            return self.prompt
        return (f"{self.prompt}\nThis is request {index + 1} of {num_samples} for this image: "
                "pick a different detail each time.")

    def parse(self, text: str) -> dict[str, str]:
        """The reply's JSON object (a ```json fence or surrounding prose is tolerated); raises SchemaError."""
        obj = _first_json_object(text)
        if obj is None:
            raise SchemaError("reply holds no JSON object")
        missing = [f for f in self.fields if f not in obj]
        if missing:
            raise SchemaError(f"reply lacks field(s) {missing}")
        bad = [f for f in self.fields if not isinstance(obj[f], (str, int, float)) or isinstance(obj[f], bool)]
        if bad:
            raise SchemaError(f"field(s) {bad} must be strings")
        out = {f: str(obj[f]).strip() for f in self.fields}
        empty = [f for f, v in out.items() if not v]
        if empty:
            raise SchemaError(f"field(s) {empty} are empty")
        return out

    def question(self, fields: dict[str, str]) -> str:
        return self.human if self.human is not None else fields["question"]

    def answer(self, fields: dict[str, str]) -> str:
        if "reasoning" in fields:
            return f"{fields['reasoning']}\nAnswer: {fields['answer']}"
        return fields["caption"] if "caption" in fields else fields["answer"]

    def to_conversation(self, fields: dict[str, str]) -> list[dict[str, str]]:
        return [{"from": "human", "value": "<image>\n" + self.question(fields)},
                {"from": "gpt", "value": self.answer(fields)}]

    def verify_prompt(self, fields: dict[str, str]) -> str:
        return f"{fields['question']}\nAnswer with a single word, number or short phrase only."


_JSON_ONLY = "Reply with one JSON object only, no other text: "

TASKS: dict[str, TaskTemplate] = {
    t.name: t
    for t in (
        TaskTemplate(
            name="caption",
            prompt="Describe this image in detail: the objects, their layout, colours and any visible text. "
            + _JSON_ONLY + '{"caption": "..."}',
            fields=("caption",),
            human="Describe this image in detail.",
            verify=False,
        ),
        TaskTemplate(
            name="vqa",
            prompt="Write one question that can only be answered by looking at this image, and its short answer "
            "(a word, number or short phrase). " + _JSON_ONLY + '{"question": "...", "answer": "..."}',
            fields=("question", "answer"),
        ),
        TaskTemplate(
            name="reasoning",
            prompt="Write a question about this image that needs a few steps of reasoning, the reasoning steps, "
            "and the final short answer. " + _JSON_ONLY + '{"question": "...", "reasoning": "...", "answer": "..."}',
            fields=("question", "reasoning", "answer"),
        ),
        TaskTemplate(
            name="chart_qa",
            prompt="Treat this image as a chart, plot or table. Write a question about a value, comparison or trend "
            "shown in it, and its answer (a number or a short phrase). "
            + _JSON_ONLY + '{"question": "...", "answer": "..."}',
            fields=("question", "answer"),
        ),
        TaskTemplate(
            name="ocr_qa",
            prompt="Write a question whose answer is text that is written in this image, and the answer copied "
            "exactly as written. " + _JSON_ONLY + '{"question": "...", "answer": "..."}',
            fields=("question", "answer"),
        ),
    )
}


def parse_tasks(spec: str) -> list[TaskTemplate]:
    """``"caption,vqa"`` -> templates; an unknown name is an error that lists the known ones."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError("no tasks given; choose from " + ", ".join(TASKS))
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task listed twice in {spec!r}")
    return [TASKS[n] for n in names]


def _first_json_object(text: str) -> dict | None:
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None
