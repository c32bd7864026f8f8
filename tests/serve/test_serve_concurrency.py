"""Through the real path (openai client -> REST -> tritonserver -> continuous engine) on the input-sensitive
model: requests sent staggered and concurrently, with several images, streaming and not, each get the answer
the same request gets decoded alone in-process by ``EagleModel.generate``; the engine metrics show the queue
and the vision cache."""

from __future__ import annotations

import asyncio

import openai
import pytest
from serve_helpers import ServeProcess, data_url, image_message, metric_value, png_bytes

from nemo_eagle.serve.engine import Engine

CONTEXT = 2048


@pytest.fixture(scope="module")
def server(sensitive_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = ServeProcess(sensitive_ckpt, log, "--max-model-len", str(CONTEXT), "--max-num-seqs", "3",
                        "--prefill-chunk", "64", "--served-model-name", "m")
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs()[-3000:]


def alone(engine, messages, images, max_tokens, max_tiles) -> str:
    plain = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
              [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]
    batch = engine.processor(text=engine.render(plain), images=list(images), max_tiles=max_tiles)
    ids = engine.model.generate(**batch, max_new_tokens=max_tokens)[0].tolist()
    eos = engine.tokenizer.eos_token_id
    return engine.tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids)


def test_staggered_concurrent_requests_equal_each_alone(server, sensitive_ckpt):
    imgs = [png_bytes(640, 480, 11), png_bytes(300, 900, 12), png_bytes(800, 600, 13)]
    cases = [
        ([{"role": "user", "content": "hello there"}], [], 14, False),
        (image_message([data_url(imgs[0])], "what is this"), imgs[:1], 12, True),
        (image_message([data_url(imgs[0]), data_url(imgs[1])], "compare"), imgs[:2], 12, False),
        (image_message([data_url(imgs[1]), data_url(imgs[0])], "compare"), imgs[1::-1], 12, True),
        (image_message([data_url(b) for b in imgs], "all three"), imgs, 10, False),
        ([{"role": "user", "content": "a different question about a chart"}], [], 16, True),
        (image_message([data_url(imgs[0])], "what is this"), imgs[:1], 12, False),  # repeated image, not streamed
    ]

    async def main():
        client = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)

        async def one(k, messages, max_tokens, stream):
            await asyncio.sleep(0.05 * k)  # staggered: later ones join a running batch
            kw = {"model": "m", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
                  "extra_body": {"max_tiles": 2}}
            if not stream:
                r = await client.chat.completions.create(**kw)
                return r.choices[0].message.content
            chunks = [c async for c in await client.chat.completions.create(stream=True, **kw)]
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        try:
            return await asyncio.gather(*(one(k, m, n, s) for k, (m, _, n, s) in enumerate(cases)))
        finally:
            await client.close()

    got = asyncio.run(main())
    engine = Engine.from_pretrained(sensitive_ckpt, max_model_len=CONTEXT, device="cpu", dtype="float32")
    expected = [alone(engine, m, imgs_, n, 2) for m, imgs_, n, _ in cases]
    assert got == expected
    assert len(set(expected)) >= 6 and expected[2] != expected[3]  # the answers depend on the inputs
    assert got[1] == got[6]  # streaming == non-streaming
    import httpx

    text = httpx.get(server.base + "/v1/metrics", timeout=10).text
    assert metric_value(text, "nemo_eagle_engine_vision_hits") >= 2  # imgs[0] re-sent (3 requests hold it)
    assert metric_value(text, "nemo_eagle_engine_slots") == 3
    assert "nemo_eagle_engine_waiting" in text
    assert "nemo_eagle_engine_prefix_hits" in text and "nemo_eagle_engine_prefix_tokens" in text


def test_next_turn_reports_the_prompt_tokens_taken_from_the_kv_cache(server, sensitive_ckpt):
    """The second turn of a chat resends the first: its keys/values are copied (KV prefix reuse), reported as
    OpenAI's ``usage.prompt_tokens_details.cached_tokens``, and the answer is the one computed from scratch."""
    img = png_bytes(500, 400, 21)
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)
    first = [{"role": "system", "content": "You look at pictures for a museum catalogue. Answer in one sentence."},
             *image_message([data_url(img)], "what is in this picture")]
    kw = {"model": "m", "max_tokens": 10, "temperature": 0, "extra_body": {"max_tiles": 2}}
    a = client.chat.completions.create(messages=first, **kw)
    assert a.usage.prompt_tokens_details.cached_tokens == 0  # nothing in the cache starts like it
    second = [*first, {"role": "assistant", "content": a.choices[0].message.content},
              {"role": "user", "content": "and what colour is it?"}]
    chunks = list(client.chat.completions.create(messages=second, stream=True,
                                                 stream_options={"include_usage": True}, **kw))
    usage = chunks[-1].usage
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert a.usage.prompt_tokens < usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    engine = Engine.from_pretrained(sensitive_ckpt, max_model_len=CONTEXT, device="cpu", dtype="float32")
    assert a.choices[0].message.content == alone(engine, first, [img], 10, 2)
    assert text == alone(engine, second, [img], 10, 2)
    client.close()
