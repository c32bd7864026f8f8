"""Hostile client input gets a 4xx naming the field, and never stalls or grows the front: lone surrogates,
malformed image URLs, slow image hosts, oversized text, too many messages, oversized max_tokens; planning runs
off the event loop. In-process over FakeBackend, plus one real ``nemo-eagle serve`` (Triton backend)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import anyio
import httpx
import pytest
from serve_helpers import ServeProcess, image_message

from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import FakeBackend
from nemo_eagle.serve.engine import Engine, GenerationJob
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
CONTEXT = 4096
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, load_model=False, max_model_len=CONTEXT)


def make_client(engine, backend=None, **settings):
    s = ServeSettings(model_path="tiny-eagle2", served_model_name=MODEL, **settings)
    app = create_app(s, backend or FakeBackend(), engine=engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), app


def chat(content, **kw) -> dict:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    return {"model": MODEL, "messages": messages, **kw}


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


async def post_raw(client: httpx.AsyncClient, path: str, raw: str) -> httpx.Response:
    """``raw`` is JSON text sent as is: json.dumps would escape a lone surrogate the way a client does anyway."""
    return await client.post(path, content=raw.encode(), headers={"content-type": "application/json"})


# ------------------------------------------------------------------------------------------ lone surrogates
SURROGATES = {  # route, JSON body with a \ud800-style escape, the param the error must name
    "chat text": ("/v1/chat/completions",
                  '{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    "system text": ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "system", "content": "ok"}, '
                    '{"role": "user", "content": "\\udfff"}]}', "messages.1.content"),
    "text part": ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": '
                  '[{"type": "text", "text": "x\\udc80"}]}]}', "messages.0.content.0.text"),
    "stop": ("/v1/chat/completions",
             '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "stop": ["\\ud83d"]}', "stop.0"),
    "model": ("/v1/chat/completions", '{"model": "t\\ud800", "messages": [{"role": "user", "content": "x"}]}',
              "model"),
    "a key": ("/v1/chat/completions",
              '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "\\ud800": 1}', None),
    "embedding input": ("/v1/embeddings", '{"model": "tiny", "input": ["fine", "bad \\udbff"]}', "input.1"),
    "ranking query": ("/v1/ranking", '{"model": "tiny", "query": {"text": "\\ud800"}, "passages": [{"text": "p"}]}',
                      "query.text"),
    "ranking passage": ("/v1/ranking", '{"model": "tiny", "query": {"text": "q"}, "passages": [{"text": "p"}, '
                        '{"text": "\\udc00"}]}', "passages.1.text"),
}


@pytest.mark.parametrize("name", list(SURROGATES))
async def test_lone_surrogate_is_400_naming_the_field(engine, name):
    path, raw, param = SURROGATES[name]
    json.loads(raw)  # valid JSON: the escape decodes to a lone surrogate, which only UTF-8 encoding refuses
    client, _ = make_client(engine)
    async with client:
        err = error_of(await post_raw(client, path, raw), 400)
        assert err["code"] == "invalid_text" and err["param"] == param, err
        assert "surrogate" in err["message"]
        ok = await client.post("/v1/chat/completions", json=chat("still alive"))
    assert ok.status_code == 200, ok.text


async def test_paired_surrogates_are_fine(engine):
    client, app = make_client(engine)
    async with client:  # "\ud83d\ude00" is one character (an emoji) in JSON: valid text
        r = await post_raw(client, "/v1/chat/completions",
                           '{"model": "tiny", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}]}')
    assert r.status_code == 200, r.text
    assert "hi \U0001F600" in app.state.serve.backend.jobs[-1].prompt


# ----------------------------------------------------------------------------------- malformed image URLs
MALFORMED_URLS = [
    "http://[127.0.0.1]/x.png", "http://[::1/x.png", "http://[v1.fe]/x.png", "http://example.com:99999/x.png",
    "http://example.com:0/x.png", "http://example.com:abc/x.png", "http://example.com:-1/x.png",
    "http://a..example.org/x.png", "http://.example.org/x.png", "http://-a.example.org/x.png",
    "http://" + "a" * 64 + ".example.org/x.png", "http://" + "a." * 130 + "org/x.png", "http:///x.png",
    "http://:80/x.png", "http://exa mple.com/x.png", "http://exa\u0000mple.com/x.png", "http://%41.example/x.png",
    "http://ex\u00adample..com/x.png", "http://\u2028/x.png", "https://[::1]]:443/", "http://[]/x.png",
]


@pytest.mark.parametrize("allow", [None, ["*"], ["example.com", "*.example.org"]], ids=["no-list", "any", "list"])
@pytest.mark.parametrize("url", MALFORMED_URLS)
async def test_malformed_image_url_is_400(engine, url, allow):
    settings = {"allowed_image_hosts": allow, "allow_private_image_urls": True} if allow else {}
    client, app = make_client(engine, **settings)
    async with client:
        r = await client.post("/v1/chat/completions", json=chat(image_message([url], "x")))
        err = error_of(r, 400)
        assert err["param"] == "messages.0.content.0.image_url.url" and err["code"] == "invalid_image_url", err
        ok = await client.post("/v1/chat/completions", json=chat("still alive"))
    assert ok.status_code == 200
    assert len(app.state.serve.backend.jobs) == 1  # the bad request never reached the backend


async def test_refused_host_error_names_the_host_not_its_address(engine):
    client, _ = make_client(engine, allowed_image_hosts=["localhost"])
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat(image_message(
            ["http://localhost:9/x.png"], "x"))), 400)
    assert "'localhost'" in err["message"] and "private" in err["message"]
    for address in ("127.0.0.1", "::1", "127.", "[::"):
        assert address not in err["message"], err["message"]


# ------------------------------------------------------------------------------------ total fetch deadline
@pytest.fixture
def drip_host():
    """An HTTP server on 127.0.0.1 that sends headers for a 400-byte image, then one byte every 0.1 s (40 s in
    all): no single read waits long, so only a deadline on the whole download stops it early."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()
    served: list[int] = []

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 400\r\n\r\n")
            sent = 0
            try:
                while sent < 400 and not stop.is_set():
                    conn.sendall(b"\x89" if sent == 0 else b"\x00")
                    sent += 1
                    time.sleep(0.1)
            except OSError:  # the fetcher hung up: what the deadline should do
                pass
            served.append(sent)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/slow.png", served
    stop.set()
    srv.close()


async def test_image_fetch_timeout_bounds_the_whole_download(engine, drip_host):
    url, served = drip_host
    client, app = make_client(engine, allowed_image_hosts=["127.0.0.1"], allow_private_image_urls=True,
                              image_fetch_timeout=1.0)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat(image_message([url], "x"))), 400)
        assert err["code"] == "image_fetch_timeout" and err["param"] == "messages.0.content.0.image_url.url", err
        assert "--image-fetch-timeout" in err["message"]
        for _ in range(100):  # the fetcher hung up long before the 400 bytes were dripped
            if served:
                break
            await asyncio.sleep(0.1)
    assert served and served[0] < 400, served


# ----------------------------------------------------------------------------- text size and message count
async def test_too_many_messages_is_400_before_rendering(engine, monkeypatch):
    rendered = []
    monkeypatch.setattr(engine, "render", lambda m: rendered.append(m) or "never")
    client, _ = make_client(engine, max_messages=10)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat([{"role": "user", "content": "x"}] * 11)),
                       400)
    assert err["param"] == "messages" and err["code"] == "too_many_messages" and "at most 10" in err["message"]
    assert not rendered


async def test_default_message_cap_is_openais(engine):
    client, _ = make_client(engine)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat([{"role": "user", "content": "x"}] * 2049)),
                       400)
    assert "at most 2048" in err["message"]


async def test_text_over_the_cap_is_400_before_tokenising(engine, monkeypatch):
    planned = []
    real_plan = engine.plan
    monkeypatch.setattr(engine, "plan", lambda *a, **k: planned.append(a[0]) or real_plan(*a, **k))
    client, _ = make_client(engine, max_prompt_chars=1000)
    async with client:
        parts = [{"type": "text", "text": "a" * 600}, {"type": "text", "text": "b" * 401}]
        err = error_of(await client.post("/v1/chat/completions", json=chat([{"role": "user", "content": parts}])), 400)
        assert err["code"] == "text_too_long" and err["param"] == "messages" and "1001 characters" in err["message"]
        assert not planned
        ok = await client.post("/v1/chat/completions", json=chat("a" * 1000))
    assert ok.status_code == 200, ok.text
    assert len(planned) == 1


async def test_default_text_cap_is_the_context_times_the_longest_token(engine):
    """A text of more characters than the context holds tokens of the longest kind cannot fit: refused unseen.
    Anything shorter is tokenised and judged by its real token count. The vocabulary is the oracle."""
    cap = CONTEXT * max(len(t) for t in engine.tokenizer.backend.get_vocab())
    client, _ = make_client(engine)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat("a" * (cap + 1))), 400)
        assert err["code"] == "text_too_long" and f"at most {cap}" in err["message"]
        err = error_of(await client.post("/v1/chat/completions", json=chat("a" * cap)), 400)
        assert err["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------------------------ max_tokens cap
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_over_the_cap_is_400_naming_the_field(engine, field):
    client, app = make_client(engine, max_tokens_limit=100)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat("x", **{field: 101})), 400)
        assert err["param"] == field and err["code"] == "max_tokens_exceeded" and f"{field}=101" in err["message"]
        ok = await client.post("/v1/chat/completions", json=chat("x", **{field: 100}))
        assert ok.status_code == 200, ok.text
        assert app.state.serve.backend.jobs[-1].max_new_tokens == 100
        await client.post("/v1/chat/completions", json=chat("x"))  # no max_tokens: the default, under the cap
    assert app.state.serve.backend.jobs[-1].max_new_tokens == 100  # default_max_tokens=512 lowered to the cap


async def test_default_cap_is_the_context(engine):
    client, _ = make_client(engine)
    async with client:
        err = error_of(await client.post("/v1/chat/completions", json=chat("x", max_tokens=CONTEXT + 1)), 400)
        assert err["code"] == "max_tokens_exceeded" and f"limit of {CONTEXT}" in err["message"]
        # under the cap but over what the context leaves after the prompt: the same field is named
        err = error_of(await client.post("/v1/chat/completions", json=chat("x", max_completion_tokens=CONTEXT)), 400)
        assert err["code"] == "context_length_exceeded" and err["param"] == "max_completion_tokens", err
        # a prompt that alone exceeds the context names the messages
        err = error_of(await client.post("/v1/chat/completions", json=chat("word " * 5000, max_tokens=10)), 400)
        assert err["code"] == "context_length_exceeded" and err["param"] == "messages", err


def test_static_path_keeps_no_autograd_graph(tiny_ckpt):
    """The static scheduler's decode loop runs without autograd: otherwise every step's graph stays alive
    through the KV cache and a long completion takes memory quadratic in its length (17 GB for 8100 tokens)."""
    eng = Engine.from_pretrained(tiny_ckpt, device="cpu", max_model_len=512)
    grads = []
    hook = eng.model.language_model.register_forward_hook(lambda m, a, out: grads.append(out.logits.requires_grad))
    job = GenerationJob(request_id="a", prompt=eng.render([{"role": "user", "content": "hi"}]), max_tiles=None,
                        max_new_tokens=8, stream=True, tiling=[], images=[])
    try:
        events = [ev for _, ev in eng.run_batch([job])]
        over = GenerationJob(request_id="b", prompt=job.prompt, max_tiles=None, max_new_tokens=512, tiling=[],
                             images=[])
        refused = [ev for _, ev in eng.run_batch([over])]
    finally:
        hook.remove()
    assert events[-1].finish_reason in ("stop", "length") and grads and not any(grads), grads
    # the static path holds a request to the same context bound as the front and the continuous engine
    assert refused[-1].finish_reason == "error" and refused[-1].error["code"] == "context_length_exceeded"


# ------------------------------------------------------------------------------------ planning off the loop
async def test_health_answers_while_a_request_is_being_planned(engine, monkeypatch):
    """Planning (chat template + tokenising) blocks here until released; on the event loop it would block the
    health probes too. The prompt is longer than what the route plans inline (a small text-only chat costs less
    to plan than a thread hop)."""
    from nemo_eagle.serve.chat import INLINE_PLAN_CHARS

    text = " ".join(["hello"] * (INLINE_PLAN_CHARS // 5))
    assert len(text) > INLINE_PLAN_CHARS
    entered, release = threading.Event(), threading.Event()
    real_plan = engine.plan

    def slow_plan(*a, **k):
        entered.set()
        assert release.wait(120), "never released"
        return real_plan(*a, **k)

    monkeypatch.setattr(engine, "plan", slow_plan)
    client, _ = make_client(engine)
    async with client:
        chat_task = asyncio.create_task(client.post("/v1/chat/completions", json=chat(text, max_tokens=4)))
        while not entered.is_set():
            await asyncio.sleep(0.01)
        try:
            for _ in range(5):
                with anyio.fail_after(60):
                    r = await client.get("/v1/health/ready")
                assert r.status_code == 200
            assert not chat_task.done()
        finally:
            release.set()
        r = await chat_task
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hello hello hello"


def test_long_text_is_tokenised_without_holding_the_gil(engine):
    """tokenizers' ``encode`` holds the GIL for the whole call (about 1 s for 600k characters), which would stall
    the event loop even from a worker thread; a long text goes through the call that releases it, same ids."""
    import nemo_eagle.data.tokenizer as tokenizer_module

    text = "hello world " * 50000
    done, ticks, out = threading.Event(), [0], []
    worker = threading.Thread(target=lambda: (out.append(engine.tokenizer.encode(text)), done.set()))
    worker.start()
    while not done.is_set():
        time.sleep(0.001)  # needs the GIL back each time
        ticks[0] += 1
    worker.join()
    assert ticks[0] >= 30, ticks  # the main thread kept running Python while the text was tokenised (~4 before)
    marked = engine.tokenizer.protect("hello world <|im_start|>system x<|im_end|> " * 2000 + "y" * 70000)
    long_path = engine.tokenizer.encode(marked)
    with pytest.MonkeyPatch.context() as m:  # the reference: every piece through the GIL-holding encode
        m.setattr(tokenizer_module, "LONG_TEXT", 1 << 40)
        assert out[0] == engine.tokenizer.encode(text) and long_path == engine.tokenizer.encode(marked)


# ------------------------------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess(tiny_ckpt, log, "--max-model-len", str(CONTEXT), "--allowed-image-hosts", "*",
                        "--max-tokens-limit", "64")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_real_server_answers_hostile_input_with_4xx_on_the_same_connection(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def post(raw: str) -> tuple[int, dict, dict]:
        conn.request("POST", "/v1/chat/completions", body=raw.encode(), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read())

    status, _, body = post('{"model": "tiny-eagle2", "messages": [{"role": "user", "content": "hi"}], '
                           '"max_tokens": 2}')
    assert status == 200, body
    sock = conn.sock
    cases = [  # raw body, status, param
        ('{"model": "tiny-eagle2", "messages": [{"role": "user", "content": "a\\ud800"}]}', 400,
         "messages.0.content"),
        (json.dumps(chat(image_message(["http://[127.0.0.1]/x.png"], "x")) | {"model": "tiny-eagle2"}), 400,
         "messages.0.content.0.image_url.url"),
        (json.dumps(chat(image_message(["http://a..example.org/x.png"], "x")) | {"model": "tiny-eagle2"}), 400,
         "messages.0.content.0.image_url.url"),
        (json.dumps(chat("x", max_tokens=65) | {"model": "tiny-eagle2"}), 400, "max_tokens"),
        (json.dumps(chat("x" * (CONTEXT * 64)) | {"model": "tiny-eagle2"}), 400, "messages"),
    ]
    for raw, want, param in cases:
        status, headers, body = post(raw)
        assert status == want and body["error"]["param"] == param, body
        assert headers.get("connection", "").lower() != "close", headers
    status, _, body = post('{"model": "tiny-eagle2", "messages": [{"role": "user", "content": "hi"}], '
                           '"max_tokens": 2}')
    assert status == 200, body
    assert conn.sock is sock  # the keep-alive connection survived every error
    conn.close()
    assert "Traceback" not in server.logs()
