"""The REST contract over FakeBackend (no model, no Triton): schemas, SSE, errors, limits, auth, metrics.

Runs in-process through ``httpx.ASGITransport``; the official ``openai`` client parses what the app returns.
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import openai
import pytest
from serve_helpers import bomb_png, data_url, image_message, metric_value, png_bytes

from nemo_eagle.data.processor import EagleProcessor
from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import FakeBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, load_model=False, max_model_len=4096)


@pytest.fixture(scope="module")
def processor(tiny_ckpt):
    return EagleProcessor.from_pretrained(tiny_ckpt)


def make_client(engine, backend=None, **settings):
    """An in-process client for an app over ``backend`` (a FakeBackend by default) and the tiny tokenizer."""
    s = ServeSettings(model_path="tiny-eagle2", served_model_name=MODEL, **settings)
    app = create_app(s, backend or FakeBackend(), engine=engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), app


def chat_body(content, **kw) -> dict:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return {"model": MODEL, "messages": messages, **kw}


def assert_openai_error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w.lower() in err["message"].lower(), err["message"]
    return err


# ------------------------------------------------------------------------------------------ chat, happy path
async def test_chat_completion_shape_and_usage(engine, processor):
    client, app = make_client(engine)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body("hello world", max_tokens=10))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-") and out["model"] == MODEL
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello world"}
    assert out["choices"][0]["finish_reason"] == "stop"
    # prompt tokens = the tokenizer's count of the rendered chat prompt (processor as the oracle)
    prompt = processor.apply_chat_template([{"role": "user", "content": "hello world"}])
    assert out["usage"]["prompt_tokens"] == len(processor.tokenizer.encode(prompt))
    assert out["usage"]["completion_tokens"] == 3
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 3
    job = app.state.serve.backend.jobs[0]
    assert job.prompt == prompt and job.max_new_tokens == 10 and job.temperature == 0.0


async def test_openai_client_parses_chat_and_stream(engine):
    client, _ = make_client(engine)
    async with client:
        oc = openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=client)
        r = await oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c"}])
        assert r.choices[0].message.content == "echo: a b c"
        stream = await oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a b c"}],
                                                  stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: a b c"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


async def test_sse_wire_format(engine):
    client, _ = make_client(engine)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body("x y", stream=True))
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["tiling"] == []
    assert "usage" not in json.loads(events[-2][6:])  # include_usage not asked for


async def test_n_choices_stop_and_seed(engine):
    client, app = make_client(engine)
    async with client:
        resp = await client.post("/v1/chat/completions",
                                 json=chat_body("one two three four", n=3, seed=7, stop=["three"], temperature=0.5))
    out = resp.json()
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "echo: one two " and c["finish_reason"] == "stop" for c in out["choices"])
    jobs = app.state.serve.backend.jobs
    assert sorted(j.seed for j in jobs) == [7, 8, 9] and all(j.stop == ["three"] for j in jobs)
    assert all(j.temperature == 0.5 for j in jobs)


async def test_max_tokens_gives_length(engine):
    client, _ = make_client(engine)
    async with client:
        out = (await client.post("/v1/chat/completions", json=chat_body("a b c d e f", max_tokens=2))).json()
    assert out["choices"][0]["message"]["content"] == "echo: a" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 2


async def test_images_are_planned_and_sent_in_order(engine, processor):
    imgs = [png_bytes(640, 480, 1), png_bytes(300, 900, 2)]
    client, app = make_client(engine)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(
            image_message([data_url(b) for b in imgs], "compare"), max_tiles=4))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    job = app.state.serve.backend.jobs[0]
    assert job.images == imgs and job.max_tiles == 4
    # The reported plans and prompt size are what the processor itself does with these images.
    batch = processor(text=job.prompt, images=imgs, max_tiles=4)
    assert [t["num_tiles"] for t in out["tiling"]] == [p.num_tiles for p in batch.plans]
    assert [t["grid"] for t in out["tiling"]] == [list(p.grid) for p in batch.plans]
    assert out["usage"]["prompt_tokens"] == batch["input_ids"].shape[1]


async def test_tiles_shrink_to_fit_the_context(engine, processor):
    """Two 640x480 images at 12 tiles need 2 x 13 x 256 tokens; a 4096 context forces fewer tiles, not an error."""
    imgs = [png_bytes(640, 480, 3), png_bytes(640, 480, 4)]
    client, app = make_client(engine)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat_body(
            image_message([data_url(b) for b in imgs], "what changed?"), max_tokens=64))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert all(t["reduced"] and t["requested_max_tiles"] == 12 for t in out["tiling"])
    applied = out["tiling"][0]["max_tiles"]
    job = app.state.serve.backend.jobs[0]
    assert job.max_tiles == applied < 12
    batch = processor(text=job.prompt, images=imgs, max_tiles=applied)
    assert out["usage"]["prompt_tokens"] == batch["input_ids"].shape[1] <= 4096 - 64
    # and one more tile per image would not have fitted
    bigger = processor(text=job.prompt, images=imgs, max_tiles=applied + 1)
    assert bigger["input_ids"].shape[1] > 4096 - 64


# ----------------------------------------------------------------------------------------------- bad input
BAD_REQUESTS = {
    "malformed json": (b'{"model": "tiny", "messages": [', 400, ("malformed JSON",)),
    "messages not a list": (chat_body("x") | {"messages": "hello"}, 400, ("messages",)),
    "temperature wrong type": (chat_body("x", temperature="hot"), 400, ("temperature",)),
    "unknown role": (chat_body([{"role": "robot", "content": "x"}]), 400, ("role",)),
    "empty messages": (chat_body([]), 400, ("messages",)),
    "negative max_tokens": (chat_body("x", max_tokens=-1), 400, ("max_tokens",)),
    "tools": (chat_body("x", tools=[{"type": "function", "function": {"name": "f"}}]), 400, ("tools", "not supported")),
    "five stops": (chat_body("x", stop=list("abcde")), 400, ("stop",)),
    "seed over 64 bits": (chat_body("x", seed=2**70, temperature=1.0), 400, ("seed",)),
    "unknown model": (chat_body("x") | {"model": "gpt-4"}, 404, ("gpt-4", "does not exist")),
    "invalid base64": (chat_body(image_message(["data:image/png;base64,@@@not base64@@@"], "x")), 400,
                       ("base64",)),
    "not an image": (chat_body(image_message([data_url(b"hello, I am text", "image/png")], "x")), 400,
                     ("not an image",)),
    "decompression bomb": (chat_body(image_message([data_url(bomb_png())], "x")), 413,
                           ("pixels", "decompression bomb")),
    "100 images": (chat_body(image_message([data_url(png_bytes(8, 8))] * 100, "x")), 400, ("100 images",)),
    "file url": (chat_body(image_message(["file:///etc/passwd"], "x")), 400, ("scheme",)),
    "http url without allow-list": (chat_body(image_message(["http://example.com/a.png"], "x")), 400,
                                    ("data url",)),
    "image in assistant turn": (chat_body([{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(8, 8))}}]}]), 400,
                                ("messages.0.content.0.type", "'text'")),
    "max_tiles over the cap": (chat_body("x", max_tiles=40), 400, ("max_tiles",)),
    "prompt too long": (chat_body("word " * 5000), 400, ("exceeds the context",)),
    "image markup in text": (chat_body("look <IMG_CONTEXT> here"), 400, ("reserved image markup",)),
    "prompt + max_tokens too long": (chat_body("x", max_tokens=5000), 400, ("max_tokens=5000",)),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
async def test_bad_requests_are_4xx_with_a_clear_message(engine, name):
    body, status, words = BAD_REQUESTS[name]
    client, app = make_client(engine)
    async with client:
        kw = (
            {"content": body, "headers": {"content-type": "application/json"}}
            if isinstance(body, bytes)
            else {"json": body}
        )
        resp = await client.post("/v1/chat/completions", **kw)
        assert_openai_error(resp, status, *words)
        ok = await client.post("/v1/chat/completions", json=chat_body("still alive"))
    assert ok.status_code == 200
    assert app.state.serve.backend.jobs[-1].prompt.endswith("still alive<|im_end|>\n<|im_start|>assistant\n")


async def test_small_text_prompts_are_planned_inline_and_larger_ones_on_the_planning_threads(engine, processor):
    from concurrent.futures import ThreadPoolExecutor

    from nemo_eagle.serve.chat import INLINE_PLAN_CHARS, INLINE_PLAN_MESSAGES

    class Counting(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            Counting.submitted += 1
            return super().submit(*args, **kwargs)

    client, app = make_client(engine)
    app.state.serve.planner = Counting(1)
    many = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"}
            for i in range(INLINE_PLAN_MESSAGES + 1)]
    cases = [([{"role": "user", "content": "hello"}], False),  # (messages, planned on a thread)
             ([{"role": "user", "content": "a" * INLINE_PLAN_CHARS}], False),
             ([{"role": "user", "content": [{"type": "text", "text": "ab" * INLINE_PLAN_CHARS}]}], True),
             (many, True)]
    async with client:
        for messages, threaded in cases:
            before = Counting.submitted
            resp = await client.post("/v1/chat/completions", json=chat_body(messages, max_tokens=4))
            assert resp.status_code == 200, resp.text
            assert Counting.submitted - before == int(threaded)
            prompt = processor.apply_chat_template(messages)  # same prompt and count on either path
            assert app.state.serve.backend.jobs[-1].prompt == prompt
            assert resp.json()["usage"]["prompt_tokens"] == len(processor.tokenizer.encode(prompt))
        # a planning error from the inline path is the same 400
        r = await client.post("/v1/chat/completions", json=chat_body("hi", max_tokens=4096))
        assert r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert r.json()["error"]["param"] == "max_tokens"
    app.state.serve.planner.shutdown()


async def test_error_codes(engine):
    client, _ = make_client(engine)
    async with client:
        r = await client.post("/v1/chat/completions", json=chat_body("x") | {"model": "nope"})
        assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"
        r = await client.post("/v1/chat/completions", json=chat_body(image_message([data_url(bomb_png())], "x")))
        assert r.json()["error"]["code"] == "payload_too_large"
        r = await client.post("/v1/chat/completions", json=chat_body("word " * 5000))
        assert r.json()["error"]["code"] == "context_length_exceeded"
        r = await client.get("/v1/nothing-here")
        assert_openai_error(r, 404, "no route")


async def test_size_limits(engine):
    client, _ = make_client(engine, max_request_bytes=20_000, max_image_bytes=2_000, max_images_per_request=2)
    big = png_bytes(64, 64, 5)
    assert 2_000 < len(big) < 15_000
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body("x" * 30_000)), 413,
                            "request body", "20000")
        body = json.dumps(chat_body("x" * 30_000)).encode()

        async def chunked():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(body), 4096):
                yield body[i:i + 4096]

        assert_openai_error(await client.post("/v1/chat/completions", content=chunked(),
                                              headers={"content-type": "application/json"}), 413,
                            "request body", "20000")
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body(
            image_message([data_url(big)], "x"))), 413, "bytes", "2000")
        small = data_url(png_bytes(8, 8))
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body(
            image_message([small] * 3, "x"))), 400, "at most 2")


async def test_pixel_limit_setting(engine):
    client, _ = make_client(engine, max_image_pixels=100 * 100)
    async with client:
        ok = await client.post("/v1/chat/completions", json=chat_body(image_message([data_url(png_bytes(100, 100))],
                                                                                      "x"), max_tiles=1))
        assert ok.status_code == 200, ok.text
        r = await client.post("/v1/chat/completions", json=chat_body(image_message([data_url(png_bytes(101, 100))],
                                                                                     "x")))
        assert_openai_error(r, 413, "10100 pixels", "10000")


async def test_private_image_urls_refused(engine):
    client, _ = make_client(engine, allowed_image_hosts=["localhost", "example.com"])
    async with client:
        r = await client.post("/v1/chat/completions", json=chat_body(image_message(["http://localhost:1/x.png"], "x")))
        assert_openai_error(r, 400, "private or loopback")
        r = await client.post("/v1/chat/completions", json=chat_body(image_message(["http://other.org/x.png"], "x")))
        assert_openai_error(r, 400, "allow-list")


@pytest.fixture
def image_host():
    """A local HTTP server: /ok.png (an image), /big.png (over the limit), /moved (a redirect)."""
    import http.server
    import threading

    ok, big = png_bytes(40, 30, 8), png_bytes(200, 200, 9)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/ok.png")
                self.end_headers()
                return
            body = {"/ok.png": ok, "/big.png": big}.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", ok
    server.shutdown()


async def test_image_urls_from_an_allowed_host(engine, image_host):
    base, ok = image_host
    client, app = make_client(engine, allowed_image_hosts=["127.0.0.1"], allow_private_image_urls=True,
                              max_image_bytes=20_000)
    async with client:
        r = await client.post("/v1/chat/completions", json=chat_body(image_message([base + "/ok.png"], "x"),
                                                                      max_tiles=1))
        assert r.status_code == 200, r.text
        assert app.state.serve.backend.jobs[-1].images == [ok]
        assert r.json()["tiling"][0]["width"] == 40
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body(
            image_message([base + "/big.png"], "x"))), 413, "20000 bytes")
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body(
            image_message([base + "/moved"], "x"))), 400, "HTTP 302", "redirects")
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body(
            image_message([base + "/missing.png"], "x"))), 400, "HTTP 404")


async def test_backend_reported_client_error_is_4xx(engine):
    fail = {"message": "image 0: image data is corrupt or truncated", "status": 400, "code": "invalid_image"}
    client, _ = make_client(engine, FakeBackend(fail_with=fail))
    async with client:
        r = await client.post("/v1/chat/completions", json=chat_body("x"))
        assert_openai_error(r, 400, "corrupt")
        r = await client.post("/v1/chat/completions", json=chat_body("x", stream=True))
        assert_openai_error(r, 400, "corrupt")  # before any SSE byte


# ------------------------------------------------------------------------------------------- auth, health
async def test_api_key(engine):
    client, _ = make_client(engine, api_key="s3cret")
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat_body("x")), 401, "missing API key")
        r = await client.post("/v1/chat/completions", json=chat_body("x"), headers={"Authorization": "Bearer nope"})
        assert_openai_error(r, 401, "invalid API key")
        assert (await client.get("/v1/models")).status_code == 401
        r = await client.post("/v1/chat/completions", json=chat_body("x"), headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        for route in ("/v1/health/live", "/v1/health/ready", "/v1/metrics"):
            assert (await client.get(route)).status_code == 200


async def test_health_and_info_routes(engine):
    client, app = make_client(engine, FakeBackend(ready=False))
    async with client:
        assert (await client.get("/v1/health/live")).json() == {"object": "health.response",
                                                                  "message": "Service is live."}
        assert_openai_error(await client.get("/v1/health/ready"), 503, "not ready")
        app.state.serve.backend.ready = True
        assert (await client.get("/v1/health/ready")).json() == {"object": "health.response",
                                                                   "message": "Service is ready."}
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"] == MODEL
        assert models["data"][0]["max_model_len"] == 4096 and models["data"][0]["object"] == "model"
        meta = (await client.get("/v1/metadata")).json()
        assert meta["modelInfo"][0]["shortName"] == MODEL and meta["tiling"]["tokens_per_tile"] == 256
        assert (await client.get("/v1/version")).json()["release"]
        lic = (await client.get("/v1/license")).json()
        assert lic["object"] == "license" and "Apache-2.0" in lic["text"]
        app.state.serve.draining = True
        assert_openai_error(await client.get("/v1/health/ready"), 503, "shutting down")


async def test_metrics_count_requests_tokens_and_tiles(engine):
    client, _ = make_client(engine)
    async with client:
        await client.post("/v1/chat/completions", json=chat_body(image_message([data_url(png_bytes(64, 48))], "x"),
                                                                 max_tiles=2))
        await client.post("/v1/chat/completions", json=chat_body("x", model="nope"))
        text = (await client.get("/v1/metrics")).text
    assert metric_value(text, "nemo_eagle_requests_total", route="/v1/chat/completions", status="200") == 1
    assert metric_value(text, "nemo_eagle_requests_total", route="/v1/chat/completions", status="404") == 1
    assert metric_value(text, "nemo_eagle_request_latency_seconds_count", route="/v1/chat/completions") == 2
    assert metric_value(text, "nemo_eagle_images_total") == 1
    # 64x48 at max_tiles=2 -> a 1x1 grid, one tile, no thumbnail
    assert metric_value(text, "nemo_eagle_image_tiles_total") == 1
    assert metric_value(text, "nemo_eagle_prompt_tokens_total") > 256
    assert metric_value(text, "nemo_eagle_completion_tokens_total") == 2
    assert metric_value(text, "nemo_eagle_queue_depth") == 0
    assert metric_value(text, "nemo_eagle_batch_size_count") == 1


# ----------------------------------------------------------------------------------- embeddings, ranking
async def test_embeddings_and_ranking_shapes(engine):
    client, _ = make_client(engine)
    async with client:
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b b"], "input_type": "query"})
        out = r.json()
        assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
        vec = np.array(out["data"][0]["embedding"], dtype=np.float32)
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": "a", "encoding_format": "base64"})
        decoded = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, vec)
        assert out["usage"]["prompt_tokens"] == out["usage"]["total_tokens"] == 3
        r = await client.post("/v1/ranking", json={"model": MODEL, "query": {"text": "red car"},
                                                   "passages": [{"text": "blue sky"}, {"text": "a red car"}]})
        assert r.json()["rankings"][0]["index"] == 1
        img = data_url(png_bytes(32, 32))
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": [img], "input_type": "query"})
        assert_openai_error(r, 400, "input_type='passage'")
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": [data_url(bomb_png())],
                                                      "input_type": "passage"})
        assert_openai_error(r, 413, "pixels")
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": "x", "truncate": "MIDDLE"})
        assert_openai_error(r, 400, "truncate")
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": []})
        assert_openai_error(r, 400, "at least 1 item")


# --------------------------------------------------------------------------------------------- settings
def test_settings_env_and_cli(monkeypatch):
    from nemo_eagle.serve.settings import settings_from_argv

    monkeypatch.setenv("NIM_SERVED_MODEL_NAME", "from-env")
    monkeypatch.setenv("NIM_SERVER_PORT", "9001")
    monkeypatch.setenv("NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS", "250")
    monkeypatch.setenv("NIM_ALLOWED_IMAGE_HOSTS", "a.com, *.b.org")
    monkeypatch.setenv("NIM_LOG_LEVEL", "debug")
    s = settings_from_argv(["--model", "some/model", "--port", "9002", "--jsonl-logging"])
    assert (s.model_path, s.server_port, s.served_model_name) == ("some/model", 9002, "from-env")
    assert s.triton_dynamic_batching_max_queue_delay_microseconds == 250
    assert s.allowed_image_hosts == ["a.com", "*.b.org"] and s.log_level == "DEBUG" and s.jsonl_logging
    monkeypatch.delenv("NIM_SERVED_MODEL_NAME")
    assert settings_from_argv(["--model", "hf://nvidia/Eagle2-1B"]).model_name == "nvidia/Eagle2-1B"
    with pytest.raises(ValueError, match="server_port"):
        settings_from_argv(["--port", "99999"])


def test_serve_cli_reports_missing_model(capsys, monkeypatch):
    from nemo_eagle.serve.cli import main

    monkeypatch.delenv("NIM_MODEL_PATH", raising=False)
    assert main(["--backend", "local"]) == 2
    assert main(["--model", "/no/such/dir", "--backend", "local"]) == 2
    assert main(["--port", "not-a-port"]) == 2
    assert "server_port" in capsys.readouterr().err


async def test_tracing_middleware_records_spans(engine):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from nemo_eagle.serve.telemetry import TracingMiddleware

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client, app = make_client(engine)
    app.add_middleware(TracingMiddleware, tracer=provider.get_tracer("test"), span_kind=SpanKind.SERVER)
    async with client:
        await client.post("/v1/chat/completions", json=chat_body("x"))
        await client.get("/v1/models")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["POST /v1/chat/completions"].attributes["http.status_code"] == 200
    assert spans["GET /v1/models"].kind == SpanKind.SERVER


async def test_batch_input_limit(engine):
    client, _ = make_client(engine, max_batch_inputs=3)
    async with client:
        r = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a"] * 4})
        assert_openai_error(r, 400, "4 input", "at most 3")
        r = await client.post("/v1/ranking", json={"model": MODEL, "query": {"text": "q"},
                                                   "passages": [{"text": "p"}] * 5})
        assert_openai_error(r, 400, "5 passages", "at most 3")
        ok = await client.post("/v1/embeddings", json={"model": MODEL, "input": ["a"] * 3})
        assert ok.status_code == 200, ok.text


async def test_image_fetch_connects_to_the_checked_address(engine, image_host, monkeypatch):
    # "images.test" does not resolve anywhere: the fetch can only succeed by connecting to the address the server
    # checked (here 127.0.0.1), which closes DNS rebinding between the check and the download.
    from nemo_eagle.serve import media

    base, ok = image_host
    port = base.rsplit(":", 1)[1]
    checked = []

    async def fake_resolve(host, port_):
        checked.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(media, "_resolve", fake_resolve)
    client, app = make_client(engine, allowed_image_hosts=["images.test"], allow_private_image_urls=True,
                              max_image_bytes=20_000)
    async with client:
        r = await client.post("/v1/chat/completions", json=chat_body(
            image_message([f"http://images.test:{port}/ok.png"], "x"), max_tiles=1))
        assert r.status_code == 200, r.text
    assert checked == ["images.test"] and app.state.serve.backend.jobs[-1].images == [ok]


def test_cpu_machine_does_not_warn_about_the_cuda_driver():
    """tritonserver's CUDA-driver lines (real lines of its CPU start-up) are debug on a CPU machine, warnings where
    a GPU is expected; its other warnings stay warnings."""
    import logging

    from nemo_eagle.serve.triton import triton_log_level

    pinned = ("W1202 01:02:03.456 1 pinned_memory_manager.cc:273] Unable to allocate pinned system memory, pinned "
              "memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version")
    helper = "E1202 01:02:03.457 1 server.cc:241] CudaDriverHelper has not been initialized."
    other = "W1202 01:02:03.458 1 model_lifecycle.cc:100] failed to load 'eagle'"
    assert triton_log_level(pinned, cuda=False) == logging.DEBUG == triton_log_level(helper, cuda=False)
    assert triton_log_level(pinned, cuda=True) == logging.WARNING == triton_log_level(helper, cuda=True)
    assert triton_log_level(other, cuda=False) == logging.WARNING
