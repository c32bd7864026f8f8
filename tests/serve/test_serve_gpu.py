"""GPU: the continuous engine's CUDA-graph decode and GPU tiling give the answers of each request decoded alone
(float32, so graph replay and eager decoding must agree exactly on greedy tokens)."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from nemo_eagle.serve.engine import Engine, GenerationJob


def _png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.gpu
def test_cuda_graph_decode_and_gpu_tiling_equal_each_request_alone(sensitive_ckpt):
    engine = Engine.from_pretrained(sensitive_ckpt, max_model_len=2048, device="cuda", dtype="float32")
    assert engine.processor.device.type == "cuda"  # the model side tiles on the GPU
    imgs = [_png(640, 480, 1), _png(300, 900, 2)]

    def job(rid, text, images=(), n=12):
        content = [{"type": "image"}] * len(images) + [{"type": "text", "text": text}]
        return GenerationJob(request_id=rid, prompt=engine.render([{"role": "user", "content": content}]),
                             max_tiles=2, max_new_tokens=n, images=list(images))

    jobs = [job("a", "hello there"), job("b", "compare", imgs), job("c", "compare", imgs[::-1], n=9),
            job("d", "a longer question about the chart", n=16)]
    sched = engine.scheduler(max_num_seqs=3, prefill_chunk=128)
    assert sched.runner.graphs
    sched.start()
    texts, done = {j.request_id: "" for j in jobs}, threading.Semaphore(0)

    def sink(rid):
        def put(ev):
            texts[rid] += ev.text
            if ev.finish_reason:
                done.release()
        return put

    try:
        for j in jobs:
            sched.submit(j, sink(j.request_id))
        for _ in jobs:
            assert done.acquire(timeout=120)
    finally:
        sched.close(30)
    assert any(s.graph is not None for s in sched.runner._static.values())
    for j in jobs:
        batch = engine.processor(text=j.prompt, images=j.images, max_tiles=j.max_tiles).to("cuda")
        ids = engine.model.generate(**batch, max_new_tokens=j.max_new_tokens)[0].tolist()
        eos = engine.tokenizer.eos_token_id
        ids = ids[: ids.index(eos)] if eos in ids else ids
        assert texts[j.request_id] == engine.tokenizer.decode(ids), j.request_id
    assert len(set(texts.values())) == 4
