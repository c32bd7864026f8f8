"""The serving engine on the tiny checkpoint: batched decoding equals the model's own ``generate`` per prompt,
incremental detokenisation and stop strings, error isolation, cancellation, and the in-process backend."""

from __future__ import annotations

import asyncio

import pytest
import torch
from serve_helpers import png_bytes

from nemo_eagle.serve.backends import LocalBackend
from nemo_eagle.serve.engine import Detokenizer, Engine, GenerationJob


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, max_model_len=4096)


def prompt_of(engine, text: str, n_images: int = 0) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return engine.render([{"role": "user", "content": content}])


def oracle(engine, job: GenerationJob) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) from ``EagleModel.generate`` on this job alone."""
    batch = engine.processor(text=job.prompt, images=job.images, max_tiles=job.max_tiles)
    ids = engine.model.generate(**batch, max_new_tokens=job.max_new_tokens, do_sample=False)[0].tolist()
    eos = engine.tokenizer.eos_token_id
    if eos in ids:
        cut = ids.index(eos)
        return engine.tokenizer.decode(ids[:cut]), "stop", cut + 1
    return engine.tokenizer.decode(ids), "length", len(ids)


def run(engine, jobs, cancelled=None) -> dict[int, dict]:
    out = {i: {"text": "", "events": []} for i in range(len(jobs))}
    for i, ev in engine.run_batch(jobs, cancelled):
        out[i]["text"] += ev.text
        out[i]["events"].append(ev)
    return out


def test_batched_greedy_equals_generate_per_prompt(engine):
    imgs = [png_bytes(640, 480, 1), png_bytes(300, 900, 2)]
    jobs = [
        GenerationJob(request_id="a", prompt=prompt_of(engine, "hello"), max_tiles=None, max_new_tokens=6),
        GenerationJob(request_id="b", prompt=prompt_of(engine, "describe both", 2), max_tiles=2, max_new_tokens=9,
                      images=imgs),
        GenerationJob(request_id="c", prompt=prompt_of(engine, "a much longer question about the chart"),
                      max_tiles=None, max_new_tokens=4, stream=False),
    ]
    out = run(engine, jobs)
    for i, job in enumerate(jobs):
        text, finish, tokens = oracle(engine, job)
        events = out[i]["events"]
        assert out[i]["text"] == text
        assert events[-1].finish_reason == finish and events[-1].completion_tokens == tokens
        assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
        assert events[0].batch_size == 3
        if not job.stream:  # only the first event (prompt size, tiling) and the last one cross the wire
            assert len(events) <= 2
        batch = engine.processor(text=job.prompt, images=job.images, max_tiles=job.max_tiles)
        assert events[0].prompt_tokens == batch["input_ids"].shape[1]
        assert [t["num_tiles"] for t in events[0].tiling] == [p.num_tiles for p in batch.plans]


def test_seeded_sampling_is_reproducible_and_runs_alone(engine):
    def job(rid, seed):
        return GenerationJob(request_id=rid, prompt=prompt_of(engine, "tell me"), max_tiles=None, max_new_tokens=12,
                             temperature=1.0, seed=seed)

    first = run(engine, [job("x", 5), job("y", 6)])
    again = run(engine, [job("z", 5)])
    assert first[0]["text"] == again[0]["text"]
    # seeded jobs are decoded on their own, so a seed reproduces its answer whatever else is in the batch
    assert first[0]["events"][0].batch_size == first[1]["events"][0].batch_size == 1


def test_stop_strings_cut_the_text(engine):
    base = GenerationJob(request_id="s", prompt=prompt_of(engine, "go on"), max_tiles=None, max_new_tokens=12,
                         temperature=1.0, seed=11)
    full = run(engine, [base])[0]["text"]
    assert len(full) >= 4, full
    stop = full[2:4]
    job = GenerationJob(**{**base.__dict__, "stop": [stop]})
    out = run(engine, [job])[0]
    assert out["text"] == full[: full.index(stop)]
    assert out["events"][-1].finish_reason == "stop"


def test_detokenizer_is_incremental_and_holds_back_stops(engine):
    tok = engine.tokenizer
    text = "Größe: 12 ñandú — the END of it"
    ids = tok.encode(text)
    d = Detokenizer(tok, [])
    pieces = [d.add(t) for t in ids] + [d.flush()]
    assert "".join(pieces) == tok.decode(ids) and not any("\ufffd" in p for p in pieces)
    answer = tok.decode(ids).split(" END")[0]
    d = Detokenizer(tok, [" END"])
    emitted = ""
    for t in ids:
        emitted += d.add(t)
        assert answer.startswith(emitted)  # nothing is ever taken back
        if d.stopped:
            break
        assert not emitted.endswith((" ", " E", " EN"))  # a possible start of the stop is held back
    emitted += d.flush()
    assert d.stopped and emitted == answer


def test_bad_job_fails_alone(engine):
    jobs = [
        GenerationJob(request_id="bad", prompt=prompt_of(engine, "x", 1), max_tiles=1, max_new_tokens=3,
                      images=[png_bytes(64, 64)[:60]]),
        GenerationJob(request_id="good", prompt=prompt_of(engine, "x"), max_tiles=None, max_new_tokens=3),
    ]
    out = run(engine, jobs)
    err = out[0]["events"][-1]
    assert err.finish_reason == "error" and err.error["status"] == 400 and err.error["code"] == "invalid_image"
    assert out[1]["events"][-1].finish_reason in ("stop", "length")


def test_cancellation_stops_a_row(engine):
    steps = {"n": 0}

    def cancelled(i: int) -> bool:
        steps["n"] += 1
        return i == 0 and steps["n"] > 6

    jobs = [GenerationJob(request_id=r, prompt=prompt_of(engine, "x"), max_tiles=None, max_new_tokens=40)
            for r in ("gone", "stays")]
    out = run(engine, jobs, cancelled)
    last = out[0]["events"][-1]
    assert last.finish_reason == "cancelled" and last.completion_tokens < 10
    assert out[1]["events"][-1].completion_tokens == oracle(engine, jobs[1])[2]


def test_local_backend_streams_cancels_and_embeds(engine):
    async def main():
        backend = LocalBackend(engine, max_batch_size=4)
        await backend.start()
        job = GenerationJob(request_id="long", prompt=prompt_of(engine, "x"), max_tiles=None, max_new_tokens=2000)
        stream = backend.stream(job)
        got = [await anext(stream) for _ in range(2)]
        await stream.aclose()  # the client went away
        short = GenerationJob(request_id="short", prompt=prompt_of(engine, "y"), max_tiles=None, max_new_tokens=3)
        events = [ev async for ev in backend.stream(short)]
        result = await backend.call({"task": "embed", "input": ["hello", "world"], "input_type": "query"})
        await backend.close()
        return got, events, (result, dict(backend.finished))

    got, events, (result, finished) = asyncio.run(main())
    assert got[0].prompt_tokens and events[-1].finish_reason in ("stop", "length")
    reason, tokens = finished["long"]
    assert reason == "cancelled" and tokens < 2000
    expected = engine.embedder.embed(["hello", "world"], "query")
    torch.testing.assert_close(torch.tensor(result["embeddings"]), expected)
    assert result["num_tokens"] == engine.embedder.prepare(["hello", "world"], "query").num_tokens
