"""The API contract: schema violations are OpenAI 400s naming the field, the OpenAPI document describes every
response (checked with an independent JSON Schema validator, jsonschema-rs, against what the app really sends),
every limit it declares is the one the server enforces, 405s carry ``Allow``, and the NIM surface (model card,
metadata, health) matches NVIDIA's published VLM NIM API.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema_rs
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import data_url, image_message, png_bytes

from nemo_eagle._version import __version__
from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import FakeBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, load_model=False, max_model_len=4096)


def make_client(engine, backend=None, **settings):
    s = ServeSettings(model_path=settings.pop("model_path", "tiny-eagle2"), served_model_name=MODEL, **settings)
    app = create_app(s, backend or FakeBackend(), engine=engine)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), app


def openai_client(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key="unused", http_client=http, max_retries=0)


def validator(doc: dict, schema: dict):
    """A JSON Schema 2020-12 validator for ``schema`` with the document's components in reach of its $refs."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})


def documented(doc: dict, path: str, method: str, status: int, media: str = "application/json") -> dict:
    responses = doc["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, which its document does not list"
    content = responses[str(status)]["content"]
    assert media in content, f"{method.upper()} {path} {status}: {media} not documented ({list(content)})"
    return content[media]


def check_json(doc: dict, path: str, method: str, resp: httpx.Response) -> dict:
    """The response's status, content type and body are the ones the document gives for this route."""
    assert resp.headers["content-type"].split(";")[0] == "application/json", resp.headers["content-type"]
    body = resp.json()
    validator(doc, documented(doc, path, method, resp.status_code)["schema"]).validate(body)
    return body


# ---------------------------------------------------------------------------------- 400 with the parameter
SCHEMA_VIOLATIONS = {  # request -> the field OpenAI's `param` must name (read off the request, by hand)
    "content of the wrong type": ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    "image part without url": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {}}]}]}, "messages.0.content.0.image_url.url"),
    "text part with a number": ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "text", "text": 3}]}]}, "messages.1.content.0.text"),
    "image in a system message": ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]}, "messages.0.content.0.type"),
    "unknown role": ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0"),
    "temperature as a string": ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
                                "temperature"),
    "n as a string": ({"messages": [{"role": "user", "content": "x"}], "n": "2"}, "n"),
    "include_usage as 0": ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": 0}},
                           "stream_options.include_usage"),
    "five stop sequences": ({"messages": [{"role": "user", "content": "x"}], "stop": list("abcde")}, "stop"),
    "no messages": ({"messages": []}, "messages"),
    "missing messages": ({}, "messages"),
}


@pytest.mark.parametrize("name", list(SCHEMA_VIOLATIONS))
async def test_schema_violation_is_openai_bad_request_naming_the_field(engine, name):
    extra, param = SCHEMA_VIOLATIONS[name]
    client, _ = make_client(engine)
    async with client:
        with pytest.raises(openai.BadRequestError) as info:
            await openai_client(client).chat.completions.create(model=MODEL, **{"messages": [], **extra})
    err = info.value
    assert err.status_code == 400
    assert err.body["type"] == "invalid_request_error" and err.body["param"] == param, err.body
    assert param in err.body["message"]


async def test_embedding_and_ranking_violations_name_the_field(engine):
    client, _ = make_client(engine)
    async with client:
        with pytest.raises(openai.BadRequestError) as info:
            await openai_client(client).embeddings.create(model=MODEL, input=[])
        assert info.value.body["param"] == "input"
        with pytest.raises(openai.BadRequestError) as info:
            await openai_client(client).embeddings.create(model=MODEL, input=["ok", ""])
        assert info.value.body["param"] == "input.1"
        with pytest.raises(openai.BadRequestError) as info:
            await openai_client(client).embeddings.create(model=MODEL, input=["ok", " \n "])
        assert info.value.body["param"] == "input.1" and "no text" in info.value.body["message"]
        r = await client.post("/v1/ranking", json={"model": MODEL, "query": {"text": "q"}, "passages": [{"txt": "p"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "passages.0.text"
        r = await client.post("/v1/ranking", json={"model": MODEL, "query": {"text": " "}, "passages": [{"text": "p"}]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "query.text"


async def test_malformed_json_is_400(engine):
    client, _ = make_client(engine)
    async with client:
        r = await client.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                              headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


# --------------------------------------------------------------------------------------------- 405 + Allow
async def test_unsupported_methods_are_405_with_allow(engine):
    client, app = make_client(engine)
    doc = app.openapi()
    async with client:
        for path, ops in doc["paths"].items():
            methods = {m.upper() for m in ops} | ({"HEAD"} if "get" in ops else set())  # HEAD: GET, no body
            for method in ("TRACE", "DELETE", "PUT", "PATCH"):
                if method in methods:
                    continue
                r = await client.request(method, path)
                assert r.status_code == 405, (method, path, r.text)
                assert {m.strip() for m in r.headers["allow"].split(",")} == methods, (path, r.headers["allow"])
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}
                assert method in r.json()["error"]["message"]


@pytest.mark.parametrize("api_key", [None, "k"])
async def test_head_answers_like_get_without_a_body(engine, api_key):
    """Load balancers probe with HEAD: every GET route answers it with the GET's status and headers (RFC 9110)."""
    client, app = make_client(engine, api_key=api_key)
    gets = [path for path, ops in app.openapi()["paths"].items() if "get" in ops]
    assert {"/v1/health/live", "/v1/health/ready", "/v1/models", "/v1/metadata", "/v1/version"} <= set(gets)
    async with client:
        for path in gets:
            got, head = await client.get(path), await client.head(path)
            assert head.status_code == got.status_code, (path, head.status_code, got.text)
            assert head.content == b"" and got.content, path
            for header in ("content-type", "content-length", "www-authenticate"):
                if path == "/v1/metrics" and header == "content-length":
                    continue  # the exposition counts the GET just answered
                assert head.headers.get(header) == got.headers.get(header), (path, header)
            if api_key is None and path != "/v1/metrics":
                assert got.status_code == 200, (path, got.text)
    if api_key:
        assert got.status_code == 401 and head.status_code == 401


# ---------------------------------------------------------------------------------- the document is true
async def test_every_json_response_matches_its_documented_schema(engine):
    backend = FakeBackend(ready=False)
    client, app = make_client(engine, backend, api_key="k")
    doc = app.openapi()
    auth = {"Authorization": "Bearer k"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "a b c"}]}
    async with client:
        check_json(doc, "/v1/health/live", "get", await client.get("/v1/health/live"))
        assert (await client.get("/v1/health/ready")).status_code == 503
        check_json(doc, "/v1/health/ready", "get", await client.get("/v1/health/ready"))
        backend.ready = True
        check_json(doc, "/v1/health/ready", "get", await client.get("/v1/health/ready"))
        for path in ("/v1/models", "/v1/metadata", "/v1/version", "/v1/license"):
            assert check_json(doc, path, "get", await client.get(path)) and (await client.get(path)).status_code == 401
            check_json(doc, path, "get", await client.get(path, headers=auth))
        for body in (chat, chat | {"n": 2, "stop": ["b"]}, chat | {"model": "nope"}, chat | {"n": 0}):
            check_json(doc, "/v1/chat/completions", "post", await client.post("/v1/chat/completions", json=body,
                                                                             headers=auth))
        emb = {"model": MODEL, "input": ["a", "b b"]}
        for body in (emb, emb | {"encoding_format": "base64"}, emb | {"input": []}, emb | {"model": "nope"}):
            check_json(doc, "/v1/embeddings", "post", await client.post("/v1/embeddings", json=body, headers=auth))
        rank = {"model": MODEL, "query": {"text": "red"}, "passages": [{"text": "blue"}, {"text": "red"}]}
        for body in (rank, rank | {"passages": []}):
            check_json(doc, "/v1/ranking", "post", await client.post("/v1/ranking", json=body, headers=auth))
        big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (33 * 2**20)}]}
        check_json(doc, "/v1/chat/completions", "post", await client.post("/v1/chat/completions", json=big,
                                                                         headers=auth))
        app.state.serve.draining = True
        check_json(doc, "/v1/chat/completions", "post", await client.post("/v1/chat/completions", json=chat,
                                                                         headers=auth))


async def test_overload_429_is_documented_with_retry_after(engine):
    client, app = make_client(engine, FakeBackend(delay=0.05), max_concurrent_requests=1)
    doc = app.openapi()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "one two three four five six"}]}
    async with client:
        app.state.serve.active_jobs = 1  # one job in flight already
        r = await client.post("/v1/chat/completions", json=chat)
    check_json(doc, "/v1/chat/completions", "post", r)
    assert r.status_code == 429 and "Retry-After" in doc["paths"]["/v1/chat/completions"]["post"]["responses"][
        "429"]["headers"] and int(r.headers["retry-after"]) >= 1


async def test_chat_event_stream_matches_its_item_schema(engine):
    client, app = make_client(engine)
    doc = app.openapi()
    media = documented(doc, "/v1/chat/completions", "post", 200, "text/event-stream")
    data_schema = media["itemSchema"]["properties"]["data"]["anyOf"]
    json_events = validator(doc, data_schema[0]["contentSchema"])
    async with client:
        r = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "a b c"}], "stream": True, "n": 2,
            "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].split(";")[0] == "text/event-stream"
    events = [e for e in r.text.split("\n\n") if e]
    item = validator(doc, media["itemSchema"])
    for event in events:
        field, _, value = event.partition(": ")
        item.validate({field: value})
        if value != "[DONE]":
            json_events.validate(json.loads(value))
    assert events[-1] == "data: [DONE]" and len(events) > 4


async def test_metrics_are_documented_as_prometheus_text(engine):
    client, app = make_client(engine)
    doc = app.openapi()
    content = doc["paths"]["/v1/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/plain; version=0.0.4"], content
    async with client:
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        r = await client.get("/v1/metrics")
    kind, *params = [p.strip() for p in r.headers["content-type"].split(";")]
    assert kind == "text/plain" and "version=0.0.4" in params
    names = {f.name for f in text_string_to_metric_families(r.text)}  # prometheus_client's own parser
    assert "nemo_eagle_requests" in names and "nemo_eagle_request_latency_seconds" in names


# ------------------------------------------------------------------------ declared limits == enforced ones
async def test_declared_limits_are_the_enforced_ones(engine):
    client, app = make_client(engine, max_batch_inputs=3, max_tiles=2, max_messages=5, max_tokens_limit=64)
    doc = app.openapi()
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]

    def branch(prop: dict, kind: str) -> dict:
        return next((b for b in prop.get("anyOf", [prop]) if b.get("type") == kind), prop)

    stops = branch(props["stop"], "array")["maxItems"]
    n_max = props["n"]["maximum"]
    tiles = branch(props["max_tiles"], "integer")["maximum"]
    inputs = branch(doc["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"], "array")
    passages = branch(doc["components"]["schemas"]["RankingRequest"]["properties"]["passages"], "array")
    messages = props["messages"]["maxItems"]
    tokens = {name: branch(props[name], "integer")["maximum"] for name in ("max_tokens", "max_completion_tokens")}
    assert (stops, n_max, tiles, inputs["maxItems"], passages["maxItems"], messages) == (4, 16, 2, 3, 3, 5)
    tokens["completions"] = branch(doc["components"]["schemas"]["CompletionRequest"]["properties"]["max_tokens"],
                                   "integer")["maximum"]
    assert tokens == {"max_tokens": 64, "max_completion_tokens": 64, "completions": 64}
    assert props["messages"]["minItems"] == 1 and inputs["minItems"] == 1 and passages["minItems"] == 1
    assert branch(props["stop"], "string")["minLength"] == 1
    text = branch(doc["components"]["schemas"]["EmbeddingRequest"]["properties"]["input"], "string")
    assert text["pattern"] == inputs["items"]["pattern"] == r"\S"  # something besides whitespace
    assert str(app.state.serve.settings.max_request_bytes) in doc["info"]["description"]
    img = image_message([data_url(png_bytes(64, 48))], "x")
    user = [{"role": "user", "content": "x"}]
    cases = [  # (route, body at the limit, body one past it)
        ("/v1/chat/completions", {"messages": user * messages}, {"messages": user * (messages + 1)}),
        ("/v1/chat/completions", {"messages": user, "max_tokens": tokens["max_tokens"]},
         {"messages": user, "max_tokens": tokens["max_tokens"] + 1}),
        ("/v1/chat/completions", {"messages": user, "max_completion_tokens": tokens["max_completion_tokens"]},
         {"messages": user, "max_completion_tokens": tokens["max_completion_tokens"] + 1}),
        ("/v1/chat/completions", {"messages": user, "max_completion_tokens": 8},  # each field has its bound
         {"messages": user, "max_completion_tokens": 8, "max_tokens": tokens["max_tokens"] + 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stop": list("abcd"[:stops])},
         {"messages": [{"role": "user", "content": "x"}], "stop": list("abcde"[:stops + 1])}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": n_max},
         {"messages": [{"role": "user", "content": "x"}], "n": n_max + 1}),
        ("/v1/chat/completions", {"messages": img, "max_tiles": tiles}, {"messages": img, "max_tiles": tiles + 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, {"messages": []}),
        ("/v1/completions", {"prompt": "x", "max_tokens": tokens["completions"]},
         {"prompt": "x", "max_tokens": tokens["completions"] + 1}),
        ("/v1/embeddings", {"input": ["a"] * inputs["maxItems"]}, {"input": ["a"] * (inputs["maxItems"] + 1)}),
        ("/v1/embeddings", {"input": ["a"]}, {"input": []}),
        ("/v1/embeddings", {"input": [" a "]}, {"input": [" \t"]}),
        ("/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "p"}] * passages["maxItems"]},
         {"query": {"text": "q"}, "passages": [{"text": "p"}] * (passages["maxItems"] + 1)}),
    ]
    async with client:
        for route, ok, over in cases:
            r = await client.post(route, json={"model": MODEL, **ok})
            assert r.status_code == 200, (route, ok, r.text)
            r = await client.post(route, json={"model": MODEL, **over})
            assert r.status_code == 400, (route, over, r.text)
            assert r.json()["error"]["param"] is not None


# ---------------------------------------------------------------------------------------------- NIM surface
# Field lists of NVIDIA's "NIM for VLMs" API reference (docs.nvidia.com/nim/vision-language-models/latest/
# api-reference.html): the /v1/models example and its permission object, and the health bodies.
NIM_MODEL_CARD = {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
NIM_PERMISSION = {"id", "object", "created", "allow_create_engine", "allow_sampling", "allow_logprobs",
                  "allow_search_indices", "allow_view", "allow_fine_tuning", "organization", "group", "is_blocking"}


async def test_nim_model_card_and_health_bodies(engine):
    client, _ = make_client(engine)
    async with client:
        models = await openai_client(client).models.list()
        card = (await client.get("/v1/models")).json()["data"][0]
        logprobs = await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True})
        live = (await client.get("/v1/health/live")).json()
        ready = (await client.get("/v1/health/ready")).json()
    assert [m.id for m in models.data] == [MODEL] and models.data[0].owned_by == "system"
    assert set(card) == NIM_MODEL_CARD and card["max_model_len"] == 4096 and card["object"] == "model"
    assert [set(p) for p in card["permission"]] == [NIM_PERMISSION]
    perm = card["permission"][0]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")
    assert perm["allow_logprobs"] == (logprobs.status_code == 200)  # says what a logprobs request gets
    assert live == {"object": "health.response", "message": "Service is live."}
    assert ready == {"object": "health.response", "message": "Service is ready."}


class AddressedBackend(FakeBackend):
    """Reports internal addresses the way TritonBackend does; /v1/metadata must keep them to itself."""

    def info(self):
        return {"backend": "triton", "triton_version": "2.59.0", "triton_model": "eagle",
                "grpc_url": "127.0.0.1:18001"}


async def test_metadata_tells_the_truth(engine, tiny_ckpt):
    ckpt = str(Path(tiny_ckpt).resolve())
    client, app = make_client(engine, AddressedBackend(), model_path=ckpt, max_batch_inputs=7)
    async with client:
        r = await client.get("/v1/metadata")
        meta = r.json()
        version = (await client.get("/v1/version")).json()
        served = {}
        for flag, route in (("chat_completions", "/v1/chat/completions"), ("completions", "/v1/completions"),
                            ("embeddings", "/v1/embeddings"), ("ranking", "/v1/ranking")):
            status = (await client.post(route, json={})).status_code
            served[flag] = status != 404  # a served route refuses {} with a 400; an absent one is a 404
    assert {flag: meta[flag] for flag in served} == served and served["chat_completions"] and served["embeddings"]
    assert ckpt not in r.text and "127.0.0.1" not in r.text and "grpc" not in r.text
    assert meta["modelInfo"] == [{"shortName": MODEL, "modelUrl": Path(ckpt).name}]
    assert meta["version"] == version["release"] == __version__ and version["triton"] == "2.59.0"
    s = app.state.serve.settings
    assert meta["limits"]["max_batch_inputs"] == 7 == s.max_batch_inputs
    assert meta["limits"]["max_request_bytes"] == s.max_request_bytes
    assert meta["max_model_len"] == engine.max_model_len
