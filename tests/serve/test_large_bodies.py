"""Large request bodies are decoded and validated off the event loop (health probes keep answering), with the
same answers FastAPI's own on-loop path gives for the same bytes. In-process over FakeBackend."""

from __future__ import annotations

import asyncio
import json
import threading

import anyio
import httpx
import pytest

import nemo_eagle.serve.body as body_module
from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import FakeBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, load_model=False, max_model_len=4096)


def make_client(engine) -> httpx.AsyncClient:
    app = create_app(ServeSettings(model_path="tiny-eagle2", served_model_name=MODEL), FakeBackend(), engine=engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=600)


def user(text, n: int = 1) -> list[dict]:
    return [{"role": "user", "content": text}] * n


def chat_body(messages: list[dict], **kw) -> str:
    return json.dumps({"model": MODEL, "messages": messages, **kw})


def deep_surrogate() -> str:  # json.dumps writes a lone surrogate as the escape "\ud800"
    messages = user("some text " * 10, 1500) + user("a\ud800b")
    return chat_body(messages)


LARGE = {  # name: (route, raw JSON body, expected status, expected error param or None)
    "100k messages": ("/v1/chat/completions", chat_body(user("x", 100_000)), 400, "messages"),
    "30 MB text": ("/v1/chat/completions", chat_body(user("x" * 30_000_000)), 400, "messages"),
    "schema violation deep inside": ("/v1/chat/completions", chat_body(
        user("some text " * 10, 900) + [{"role": "user", "content": 5}] + user("y", 99)), 400, "messages.900.content"),
    "unknown role deep inside": ("/v1/chat/completions", chat_body(
        user("some text " * 10, 900) + [{"role": "robot", "content": "x"}]), 400, "messages.900"),
    "lone surrogate deep inside": ("/v1/chat/completions", deep_surrogate(), 400, "messages.1500.content"),
    "malformed JSON": ("/v1/chat/completions", chat_body(user("some text " * 10, 2000))[:-3], 400, None),
    "valid, large extra field": ("/v1/chat/completions", chat_body(user("hello"), user="u" * 300_000), 200, None),
    "completions, too many prompts": ("/v1/completions", json.dumps(
        {"model": MODEL, "prompt": ["p " * 5000] * 20}), 400, "prompt"),
    "embeddings, too many inputs": ("/v1/embeddings", json.dumps(
        {"model": MODEL, "input": ["an input text of some length"] * 5000}), 400, "input"),
    "ranking, too many passages": ("/v1/ranking", json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": [
        {"text": "a passage of some length"}] * 5000}), 400, "passages"),
    "ranking, schema violation": ("/v1/ranking", json.dumps({"model": MODEL, "query": {"text": "q"}, "passages": [
        {"text": "a passage of some length " * 4}] * 900 + [{"text": 3}]}), 400, "passages.900.text"),
}


async def post_raw(client: httpx.AsyncClient, path: str, raw: str) -> httpx.Response:
    return await client.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def answer(r: httpx.Response) -> dict:
    return {k: v for k, v in r.json().items() if k not in ("id", "created")}  # fresh per answer


@pytest.mark.parametrize("name", list(LARGE))
async def test_large_body_answers_as_fastapis_own_path(engine, monkeypatch, name):
    """The reference is FastAPI decoding the same bytes on the loop (the threshold raised past the body)."""
    path, raw, status, param = LARGE[name]
    assert len(raw.encode()) > body_module.LARGE_BODY
    threads = []
    real = body_module.decode_body
    monkeypatch.setattr(body_module, "decode_body", lambda *a: threads.append(threading.current_thread()) or real(*a))
    async with make_client(engine) as client:
        ours = await post_raw(client, path, raw)
        assert threads and threads[0] is not threading.main_thread(), threads  # decoded on a worker thread
        monkeypatch.setattr(body_module, "LARGE_BODY", 1 << 40)
        reference = await post_raw(client, path, raw)
    assert len(threads) == 1  # the reference took FastAPI's path
    assert (ours.status_code, answer(ours)) == (reference.status_code, answer(reference))
    assert ours.status_code == status, ours.text
    if status == 400:
        assert ours.json()["error"]["param"] == param, ours.json()
    if name == "malformed JSON":
        assert ours.json()["error"]["code"] == "invalid_json"


async def test_small_bodies_stay_on_fastapis_path(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(body_module, "decode_body", lambda *a: calls.append(a))
    async with make_client(engine) as client:
        r = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": user("hi")})
    assert r.status_code == 200 and not calls


@pytest.mark.parametrize("name", ["100k messages", "30 MB text"])
async def test_health_answers_while_a_large_body_is_decoded(engine, monkeypatch, name):
    """Decoding blocks here until released; on the event loop it would block the health probes too."""
    path, raw, status, param = LARGE[name]
    entered, release = threading.Event(), threading.Event()
    real = body_module.decode_body

    def slow_decode(*a):
        entered.set()
        assert release.wait(120), "never released"
        return real(*a)

    monkeypatch.setattr(body_module, "decode_body", slow_decode)
    async with make_client(engine) as client:
        task = asyncio.create_task(post_raw(client, path, raw))
        with anyio.fail_after(120):
            while not entered.is_set():
                await asyncio.sleep(0.01)
        try:
            answered = 0
            for _ in range(5):
                with anyio.fail_after(60):
                    r = await client.get("/v1/health/live")
                answered += r.status_code == 200
            assert answered == 5 and not task.done()
        finally:
            release.set()
        r = await task
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("where", [0, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3_000_000])
def test_long_text_surrogate_scan_finds_it_anywhere(where):
    """A long text is searched piecewise: a lone surrogate at or across a piece boundary is found, as a search
    of the whole text finds it (the reference)."""
    import re

    from nemo_eagle.serve.limits import has_surrogate

    text = "é" * 3_000_001
    bad = text[:where] + "\udc00" + text[where + 1:]
    reference = re.compile("[\ud800-\udfff]")
    assert has_surrogate(bad) == bool(reference.search(bad)) is True
    assert has_surrogate(text) == bool(reference.search(text)) is False
    assert not has_surrogate("plain ascii") and has_surrogate("ascii then \ud800")


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/embeddings", "/v1/ranking"])
def test_an_oversized_list_is_refused_before_validation(route):
    """The count cap is checked on the decoded JSON: the body model's validation never sees the list."""
    from types import SimpleNamespace

    from nemo_eagle.serve.chat import router as chat
    from nemo_eagle.serve.engine import EngineError
    from nemo_eagle.serve.retrieval import router as retrieval

    field = next(r for r in chat.routes + retrieval.routes if r.path == route).body_field
    key, cap = {"/v1/chat/completions": ("messages", 2048), "/v1/embeddings": ("input", 64),
                "/v1/ranking": ("passages", 64)}[route]
    settings = ServeSettings(model_path="tiny-eagle2", max_messages=2048, max_batch_inputs=64)

    def refuse(*args, **kwargs):
        raise AssertionError("the oversized list reached validation")

    unvalidated = SimpleNamespace(field_info=field.field_info, validate=refuse)
    raw = json.dumps({"model": MODEL, key: ["x"] * (cap + 1)}).encode()
    with pytest.raises(EngineError) as e:
        body_module.decode_body(raw, unvalidated, settings)
    assert e.value.param == key and str(cap + 1) in str(e.value)
    within = json.dumps({"model": MODEL, key: ["x"] * cap}).encode()
    with pytest.raises(AssertionError, match="reached validation"):  # at the cap: on to validation
        body_module.decode_body(within, unvalidated, settings)
