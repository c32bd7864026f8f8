"""A scripted fake teacher (OpenAI-compatible chat endpoint on 127.0.0.1) and fixture images for the synth tests.

Each image carries a label and a behaviour; the server recognises the image by its bytes and answers
deterministically from (label, task, sample index), so an interrupted run and a clean run must agree.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageDraw

TASK_MARKERS = {  # a phrase of each template's prompt -> task
    "Describe this image in detail": "caption",
    "needs a few steps of reasoning": "reasoning",
    "Treat this image as a chart": "chart_qa",
    "text that is written in this image": "ocr_qa",
    "can only be answered by looking": "vqa",
    "Answer with a single word": "verify",
}


def answer_for(question: str) -> str:
    return str(int(hashlib.sha256(question.encode()).hexdigest()[:6], 16) % 1000)


@dataclass
class TeacherScript:
    """image sha256 -> (label, behaviour); behaviours: ok, flaky429, flaky503, reject, bad_json, non_english,
    short, inconsistent."""

    images: dict[str, tuple[str, str]] = field(default_factory=dict)
    delay: float = 0.0
    attempts: Counter = field(default_factory=Counter)
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply(self, body: dict) -> tuple[int, dict, dict]:
        parts = body["messages"][-1]["content"]
        url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
        prompt = next(p["text"] for p in parts if p["type"] == "text")
        sha = hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        label, behaviour = self.images[sha]
        task = next(t for marker, t in TASK_MARKERS.items() if marker in prompt)
        m = re.search(r"request (\d+) of", prompt)
        k = int(m.group(1)) if m else 1
        request_key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self.lock:
            self.attempts[request_key] += 1
            attempt = self.attempts[request_key]
            self.requests.append({"task": task, "label": label, "attempt": attempt, "auth": None})
        if behaviour == "reject":
            return 400, {"error": {"message": "content policy", "type": "invalid_request_error"}}, {}
        if behaviour == "flaky429" and attempt <= 2:
            return 429, {"error": {"message": "slow down"}}, {"retry-after": "0"}
        if behaviour == "flaky503" and attempt <= 1:
            return 503, {"error": {"message": "overloaded"}}, {}
        return 200, _completion(self._content(label, behaviour, task, k, prompt)), {}

    def _content(self, label: str, behaviour: str, task: str, k: int, prompt: str) -> str:
        if task == "verify":
            question = prompt.split("\n")[0]
            return "something else entirely" if behaviour == "inconsistent" else answer_for(question)
        if behaviour == "bad_json":
            return "Sorry, I can not describe this picture."
        if behaviour == "non_english":
            question = f"Какое число написано на панели {k} картинки {label} ({task})?"
        elif behaviour == "short":
            question = "Why?"
        else:
            question = f"Which number is written in panel {k} of the {label} picture ({task})?"
        answer = answer_for(question)
        if task == "caption":
            caption = {"non_english": f"Картинка {label}, панель {k}, много цветных полос.",
                       "short": "ok"}.get(behaviour, f"A synthetic {label} picture with coloured stripes, view {k}.")
            return "```json\n" + json.dumps({"caption": caption}) + "\n```"
        if task == "reasoning":
            steps = f"First find panel {k}. Then read the digits written inside it carefully."
            return json.dumps({"question": question, "reasoning": steps, "answer": answer})
        return "Here you go: " + json.dumps({"question": question, "answer": answer})


def _completion(content: str) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-teacher",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def make_app(script: TeacherScript) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if script.delay:
            await asyncio.sleep(script.delay)
        status, payload, headers = script.reply(body)
        with script.lock:
            script.requests[-1]["auth"] = request.headers.get("authorization")
        return JSONResponse(payload, status_code=status, headers=headers)

    return app


class ServerThread:
    """uvicorn on a free 127.0.0.1 port in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake teacher did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def make_picture(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A synthetic picture: random stripes and boxes, different enough per seed for the perceptual hash."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw.text((4, 4), f"#{seed}", fill=(0, 0, 0))
    return img


# label, behaviour, seed of the picture; "dup" repeats "plain-b" slightly brightened (a near-duplicate)
IMAGE_PLAN = [
    ("plain-a", "ok", 1), ("plain-b", "ok", 2), ("plain-c", "ok", 3), ("flaky-429", "flaky429", 4),
    ("flaky-503", "flaky503", 5), ("reject", "reject", 6), ("bad-json", "bad_json", 7),
    ("non-english", "non_english", 8), ("short", "short", 9), ("inconsistent", "inconsistent", 10),
]


@pytest.fixture
def picture_maker():
    return make_picture


@pytest.fixture
def synth_images(tmp_path: Path) -> tuple[Path, TeacherScript]:
    """11 usable images (one a near-duplicate), a byte-identical copy, an unreadable file; and the script."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    script = TeacherScript()
    for label, behaviour, seed in IMAGE_PLAN:
        path = root / f"{label}.png"
        make_picture(seed).save(path)
        script.images[hashlib.sha256(path.read_bytes()).hexdigest()] = (label, behaviour)
    brighter = np.clip(np.asarray(Image.open(root / "plain-b.png"), dtype=np.int16) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(brighter).save(root / "sub" / "plain-b-copy.jpg", quality=95)
    script.images[hashlib.sha256((root / "sub" / "plain-b-copy.jpg").read_bytes()).hexdigest()] = ("plain-b", "ok")
    (root / "sub" / "same-bytes.png").write_bytes((root / "plain-a.png").read_bytes())
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root, script


@pytest.fixture
def teacher(synth_images):
    root, script = synth_images
    with ServerThread(make_app(script)) as server:
        yield server, script, root
