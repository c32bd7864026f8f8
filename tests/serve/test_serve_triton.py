"""End to end: ``nemo-eagle serve`` on the tiny checkpoint starts a real tritonserver (PyTriton's bundled binary)
and the REST front; the official ``openai`` client drives it over 127.0.0.1.

The answers are checked against the same model called in-process (``EagleModel.generate``), the prompt sizes
against ``EagleProcessor``, and batching against Triton's own metrics. One server for the whole module.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
import torch
from serve_helpers import ServeProcess, bomb_png, data_url, image_message, metric_value, png_bytes

from nemo_eagle.serve.engine import Engine

MODEL = "tiny-eagle2"
CONTEXT = 4096


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess(tiny_ckpt, log, "--max-model-len", str(CONTEXT), "--triton-max-batch-size", "16",
                        "--triton-dynamic-batching-max-queue-delay-microseconds", "20000")
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
        assert code == 0, proc.logs()[-3000:]
        # every request, cancelled ones included, was finished inside Triton: no exit-timeout at shutdown
        assert "tritonserver stopped (exit code 0)" in proc.logs(), proc.logs()[-3000:]


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    """The same checkpoint in-process: the oracle for what the server must answer."""
    return Engine.from_pretrained(tiny_ckpt, max_model_len=CONTEXT)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)


def local_greedy(engine, messages, max_tokens, max_tiles=None, images=()) -> tuple[str, int]:
    """(text, prompt_tokens) of greedy decoding in-process."""
    prompt = engine.render(messages)
    batch = engine.processor(text=prompt, images=list(images), max_tiles=max_tiles)
    ids = engine.model.generate(**batch, max_new_tokens=max_tokens, do_sample=False)[0].tolist()
    eos = engine.tokenizer.eos_token_id
    ids = ids[: ids.index(eos)] if eos in ids else ids
    return engine.tokenizer.decode(ids), batch["input_ids"].shape[1]


def triton_metrics(server) -> str:
    return httpx.get(server.base + "/v1/metrics", timeout=10).text


def plain(messages):
    """OpenAI image parts -> the processor's part format (for the in-process oracle)."""
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
             [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]


def test_health_models_and_info(server, client):
    assert httpx.get(server.base + "/v1/health/live").status_code == 200
    assert httpx.get(server.base + "/v1/health/ready").json()["message"] == "Service is ready."
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].model_extra["max_model_len"] == CONTEXT
    version = httpx.get(server.base + "/v1/version").json()
    assert version["triton"] and version["triton"].startswith("2.")
    meta = httpx.get(server.base + "/v1/metadata").json()
    assert meta["backend"]["backend"] == "triton" and meta["tiling"]["tile_size"] == 448


def test_chat_matches_the_model_in_process(client, engine):
    messages = [{"role": "user", "content": "What is in the picture?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    text, prompt_tokens = local_greedy(engine, messages, 12)
    assert r.choices[0].message.content == text
    assert r.usage.prompt_tokens == prompt_tokens and r.usage.completion_tokens <= 12
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streaming_equals_non_streaming(client):
    messages = [{"role": "user", "content": "Describe this image in detail."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0.9, seed=4)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0.9,
                                                 seed=4, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    streamed, whole = chunks[-1].usage.model_dump(), full.usage.model_dump()
    # the same prompt again: all of it but the last position (computed for the first token) from the KV cache
    assert streamed.pop("prompt_tokens_details")["cached_tokens"] == full.usage.prompt_tokens - 1
    whole.pop("prompt_tokens_details")
    assert streamed == whole


def test_multi_image_chat(client, engine):
    imgs = [png_bytes(640, 480, 1), png_bytes(300, 900, 2), png_bytes(1280, 320, 3)]
    messages = image_message([data_url(b) for b in imgs], "Compare the images.")
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, extra_body={"max_tiles": 2})
    text, prompt_tokens = local_greedy(engine, plain(messages), 8, max_tiles=2, images=imgs)
    assert r.choices[0].message.content == text
    assert r.usage.prompt_tokens == prompt_tokens
    tiling = r.model_extra["tiling"]
    assert [(t["width"], t["height"]) for t in tiling] == [(640, 480), (300, 900), (1280, 320)]
    assert all(t["num_tiles"] <= 3 and not t["reduced"] for t in tiling)


def test_tiling_shrinks_to_fit_the_context(client, engine):
    imgs = [png_bytes(640, 480, 5), png_bytes(640, 480, 6)]  # 2 x 13 tiles x 256 tokens > 4096
    messages = image_message([data_url(b) for b in imgs], "What differs?")
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=32)
    tiling = r.model_extra["tiling"]
    assert all(t["reduced"] for t in tiling)
    assert r.usage.prompt_tokens + 32 <= CONTEXT
    text, prompt_tokens = local_greedy(engine, plain(messages), 32, max_tiles=tiling[0]["max_tiles"], images=imgs)
    assert (r.choices[0].message.content, r.usage.prompt_tokens) == (text, prompt_tokens)


BAD = {
    "malformed json": (b'{"model": "tiny-eagle2", "messages": [{"role": "user"', 400, "malformed JSON"),
    "wrong type": ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "content"),
    "invalid base64": ({"model": MODEL, "messages": image_message(["data:image/png;base64,!!!"], "x")}, 400,
                       "base64"),
    "non-image bytes": ({"model": MODEL, "messages": image_message([data_url(b"\x00plain bytes")], "x")}, 400,
                        "not an image"),
    "decompression bomb": ({"model": MODEL, "messages": image_message([data_url(bomb_png())], "x")}, 413, "pixels"),
    "100 images": ({"model": MODEL, "messages": image_message([data_url(png_bytes(8, 8))] * 100, "x")}, 400,
                   "at most 16"),
    "unknown model": ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "does not exist"),
    "prompt too long": ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 5000}]}, 400,
                        "exceeds the context"),
    "embedding too long, truncate NONE": ({"model": MODEL, "input": "word " * 5000, "truncate": "NONE"}, 400,
                                          "max_length"),
    "truncated image bytes": ({"model": MODEL, "messages": image_message([data_url(png_bytes(64, 64)[:80])], "x")},
                              400, "corrupt"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_requests_get_4xx_and_the_server_lives(server, client, name):
    body, status, words = BAD[name]
    route = "/v1/embeddings" if "input" in (body if isinstance(body, dict) else {}) else "/v1/chat/completions"
    kw = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    resp = httpx.post(server.base + route, timeout=60, **kw)
    assert resp.status_code == status, resp.text
    assert words.lower() in resp.json()["error"]["message"].lower()
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "still there?"}],
                                       max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_32_concurrent_requests_are_batched(server, engine):
    before = triton_metrics(server)

    async def main():
        ac = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)
        img = data_url(png_bytes(320, 240, 9))

        async def one(i):
            content = image_message([img], f"question {i}") if i % 4 == 0 else [{"role": "user", "content": f"q {i}"}]
            return await ac.chat.completions.create(model=MODEL, messages=content, max_tokens=6,
                                                    extra_body={"max_tiles": 1})
        try:
            return await asyncio.gather(*(one(i) for i in range(32)))
        finally:
            await ac.close()

    results = asyncio.run(main())
    assert len(results) == 32 and all(r.choices[0].finish_reason in ("stop", "length") for r in results)
    text, _ = local_greedy(engine, [{"role": "user", "content": "q 5"}], 6)
    assert results[5].choices[0].message.content == text  # batching does not change greedy answers
    after = triton_metrics(server)
    delta = {name: metric_value(after, name, model="eagle") - metric_value(before, name, model="eagle")
             for name in ("nv_inference_request_success", "nv_inference_exec_count",
                          "nemo_eagle_triton_batch_size_count", "nemo_eagle_triton_batch_size_sum")}
    assert delta["nv_inference_request_success"] == 32
    # fewer model executions than requests: Triton's dynamic batcher put several requests in one execute()
    assert delta["nv_inference_exec_count"] < 32
    assert delta["nemo_eagle_triton_batch_size_sum"] == 32
    assert delta["nemo_eagle_triton_batch_size_sum"] / delta["nemo_eagle_triton_batch_size_count"] > 1
    assert metric_value(after, "nemo_eagle_batch_size_sum") > metric_value(after, "nemo_eagle_batch_size_count")


def _wait_for_cancel(server, before: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        after = triton_metrics(server)
        if metric_value(after, "nemo_eagle_triton_cancelled") > metric_value(before, "nemo_eagle_triton_cancelled"):
            return after
        time.sleep(0.2)
    pytest.fail("Triton never saw the cancellation:\n" + server.logs()[-2000:])


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_generation(server, stream):
    before = triton_metrics(server)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 3000,
            "temperature": 1.0, "seed": 1, "stream": stream}
    if stream:
        with httpx.stream("POST", server.base + "/v1/chat/completions", json=body, timeout=60) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            assert any(next(lines).startswith("data: ") for _ in range(6))
    else:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting
            httpx.post(server.base + "/v1/chat/completions", json=body, timeout=1.5)
    after = _wait_for_cancel(server, before)
    generated = (metric_value(after, "nemo_eagle_triton_generated_tokens")
                 - metric_value(before, "nemo_eagle_triton_generated_tokens"))
    assert generated < 3000
    deadline = time.monotonic() + 30  # the cancelled job gave its cache slot back
    while metric_value(after, "nemo_eagle_engine_free_slots") != metric_value(after, "nemo_eagle_engine_slots"):
        assert time.monotonic() < deadline, "the cancelled job kept its cache slot"
        time.sleep(0.2)
        after = triton_metrics(server)

    def front_recorded(text: str) -> bool:
        """The front counts the cancel (and the 499) when its handler returns, just after Triton saw it."""
        name = "nemo_eagle_cancelled_total"
        cancelled = metric_value(text, name) > metric_value(before, name)
        abandoned = stream or metric_value(text, "nemo_eagle_requests_total", route="/v1/chat/completions",
                                           status="499") >= 1
        return cancelled and abandoned

    deadline = time.monotonic() + 10
    while not front_recorded(after):
        assert time.monotonic() < deadline, "the front recorded no cancel (or no 499) for the abandoned request"
        time.sleep(0.1)
        after = triton_metrics(server)


def test_embeddings_and_ranking_through_triton(server, client, engine):
    img = data_url(png_bytes(200, 150, 7))
    r = client.embeddings.create(
        model=MODEL, input=["a red car", f"a chart {img}"], extra_body={"input_type": "passage"}
    )
    expected = engine.embedder.embed(["a red car", f"a chart {img}"], "passage")
    got = torch.tensor([d.embedding for d in r.data])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert r.usage.prompt_tokens == sum(engine.embedder.prepare(["a red car", f"a chart {img}"], "passage").num_tokens)
    ranked = httpx.post(server.base + "/v1/ranking", json={
        "model": MODEL, "query": {"text": "a red car"},
        "passages": [{"text": "blue sky"}, {"text": "a red car"}, {"text": "the stock chart"}]}).json()["rankings"]
    assert sorted(x["index"] for x in ranked) == [0, 1, 2]
    assert [x["logit"] for x in ranked] == sorted((x["logit"] for x in ranked), reverse=True)
    expected_rank = engine.embedder.rank({"text": "a red car"}, [{"text": "blue sky"}, {"text": "a red car"},
                                                                  {"text": "the stock chart"}])
    assert [x["index"] for x in ranked] == [x["index"] for x in expected_rank]


def test_metrics_expose_front_and_triton(server):
    text = triton_metrics(server)
    for name in ("nemo_eagle_requests_total", "nemo_eagle_request_latency_seconds_bucket", "nemo_eagle_queue_depth",
                 "nemo_eagle_prompt_tokens_total", "nemo_eagle_completion_tokens_total", "nemo_eagle_image_tiles_total",
                 "nv_inference_exec_count", "nv_inference_queue_duration_us", "nemo_eagle_triton_image_tiles"):
        assert name in text, name
    assert metric_value(text, "nemo_eagle_requests_total", route="/v1/chat/completions", status="200") >= 5
    assert metric_value(text, "nemo_eagle_triton_image_tiles") > 0
