"""The continuous-batching engine on the input-sensitive tiny checkpoint: every request's answer under a
staggered concurrent load equals the same request decoded alone by ``EagleModel.generate`` (the oracle, which
shares no code with the scheduler, cache or runner); admission control, cancellation, the vision cache, the
tiling plans sent by the front, and the one stop-string rule shared with ``EagleModel.stream``."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve_helpers import png_bytes

from nemo_eagle.serve.engine import Engine, GenerationJob
from nemo_eagle.serve.engine.kv_cache import CacheShape, slots_for_budget
from nemo_eagle.serve.engine.scheduler import CpuThreads

IMGS = [png_bytes(640, 480, 1), png_bytes(300, 900, 2), png_bytes(500, 500, 3)]


@pytest.fixture(scope="module")
def engine(sensitive_ckpt):
    return Engine.from_pretrained(sensitive_ckpt, max_model_len=2048, device="cpu", dtype="float32")


def prompt_of(engine, text: str, n_images: int = 0) -> str:
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    return engine.render([{"role": "user", "content": content}])


def job(engine, rid: str, text: str, images=(), n: int = 12, **kw) -> GenerationJob:
    return GenerationJob(request_id=rid, prompt=prompt_of(engine, text, len(images)), max_tiles=2, max_new_tokens=n,
                         images=list(images), **kw)


def oracle(engine, j: GenerationJob) -> tuple[str, str, int]:
    """(text, finish_reason, completion_tokens) of ``EagleModel.generate`` on this job alone (greedy)."""
    batch = engine.processor(text=j.prompt, images=j.images, max_tiles=j.max_tiles)
    ids = engine.model.generate(**batch, max_new_tokens=j.max_new_tokens, do_sample=False)[0].tolist()
    eos = engine.tokenizer.eos_token_id
    if eos in ids:
        cut = ids.index(eos)
        return engine.tokenizer.decode(ids[:cut]), "stop", cut + 1
    return engine.tokenizer.decode(ids), "length", len(ids)


class Collector:
    """Events per request id, as a scheduler delivers them (from its thread)."""

    def __init__(self, ids):
        self.events = {r: [] for r in ids}
        self.done = threading.Event()

    def sink(self, rid):
        def put(ev):
            self.events[rid].append(ev)
            if all(e and e[-1].finish_reason for e in self.events.values()):
                self.done.set()
        return put

    def text(self, rid) -> str:
        return "".join(e.text for e in self.events[rid])

    def last(self, rid):
        return self.events[rid][-1]


def serve(engine, jobs, *, stagger: float = 0.0, cancel: dict | None = None, **options):
    sched = engine.scheduler(**{"max_num_seqs": 3, "prefill_chunk": 64, **options})
    seen = {"max_waiting": 0, "max_used": 0}

    def observe(stats):
        seen["max_waiting"] = max(seen["max_waiting"], stats.waiting)
        seen["max_used"] = max(seen["max_used"], sched.runner.cache.used)

    sched.on_step = observe
    sched.start()
    got = Collector([j.request_id for j in jobs])
    try:
        for j in jobs:
            flag = (cancel or {}).get(j.request_id)
            sched.submit(j, got.sink(j.request_id), (lambda f=flag: f.is_set()) if flag else None)
            time.sleep(stagger)
        assert got.done.wait(120), {r: len(e) for r, e in got.events.items()}
    finally:
        sched.close(30)
    return got, sched, seen


def staggered_jobs(engine) -> list[GenerationJob]:
    return [
        job(engine, "text", "hello there", n=16),
        job(engine, "one-image", "what is this", IMGS[:1], n=14),
        job(engine, "two-images", "compare them", IMGS[:2], n=16),
        job(engine, "two-reversed", "compare them", IMGS[1::-1], n=16),  # same images, other order
        job(engine, "three", "all three please", IMGS, n=10, stream=False),
        job(engine, "other-text", "a different and rather longer question about charts", n=20),
        job(engine, "text-again", "hello there", n=16, stream=False),  # streaming == non-streaming
    ]


def test_staggered_concurrent_load_equals_each_request_alone(engine):
    # staggered: later requests join while earlier ones decode; 3 slots for 7 requests, 64-token prefill chunks
    jobs = staggered_jobs(engine)
    got, sched, seen = serve(engine, jobs, stagger=0.03)
    expected = {j.request_id: oracle(engine, j) for j in jobs}
    texts = {r: got.text(r) for r in expected}
    assert len(set(texts.values())) >= 6, texts  # input-sensitive: a swapped row or dropped image shows
    assert texts["two-images"] != texts["two-reversed"]  # tile order matters to this model
    for j in jobs:
        text, finish, tokens = expected[j.request_id]
        last = got.last(j.request_id)
        assert (texts[j.request_id], last.finish_reason, last.completion_tokens) == (text, finish, tokens), j.request_id
        first = got.events[j.request_id][0]
        assert first.prompt_tokens == engine.processor(text=j.prompt, images=j.images,
                                                       max_tiles=j.max_tiles)["input_ids"].shape[1]
        if not j.stream:
            assert len(got.events[j.request_id]) <= 2
    assert texts["text"] == texts["text-again"]
    assert 2 <= seen["max_used"] <= 3  # requests overlapped, within the 3 slots (queueing: the cache-full test)
    assert sched.runner.cache.used == 0  # every slot released
    assert sched.stats.steps < sum(t[2] for t in expected.values())  # rows shared decode steps


def test_wide_batches_equal_each_request_alone(engine, monkeypatch):
    """Every request in one batch: decode steps of four rows or more, which take the CPU head's transposed-weight
    GEMM (``OutputHead``), and prompts finishing while others decode share their step's head call."""
    from nemo_eagle.serve.engine.runner import OutputHead

    rows, call = [], OutputHead.__call__

    def recording(self, hidden):
        rows.append(hidden.shape[0])
        return call(self, hidden)

    monkeypatch.setattr(OutputHead, "__call__", recording)
    texts = ["hello there", "a different and rather longer question about charts", "count to ten", "why",
             "tell me a story", "what is the capital of France"]
    jobs = [job(engine, f"t{i}", t, n=20 + i) for i, t in enumerate(texts)]
    jobs += [job(engine, "one-image", "what is this", IMGS[:1], n=14), job(engine, "two", "compare", IMGS[1:], n=9)]
    got, sched, _ = serve(engine, jobs, max_num_seqs=8)
    assert sched.runner.head.transposed is not None and max(rows) >= 5, rows
    assert len(rows) < sum(got.last(j.request_id).completion_tokens for j in jobs)  # rows shared head calls
    for j in jobs:
        text, finish, tokens = oracle(engine, j)
        last = got.last(j.request_id)
        assert (got.text(j.request_id), last.finish_reason, last.completion_tokens) == (text, finish, tokens), \
            j.request_id


def test_output_head_matches_the_models_head(engine):
    from nemo_eagle.serve.engine.runner import OutputHead

    lm = engine.model.language_model
    head = OutputHead(lm)
    assert head.transposed is not None and head.extra_bytes == lm.get_output_embeddings().weight.numel() * 4
    torch.manual_seed(0)
    for n in (1, 3, 4, 9, 33):
        hidden = torch.randn(n, lm.config.hidden_size)
        want = lm.get_output_embeddings()(hidden)
        got = head(hidden)
        if n < head.MIN_ROWS:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    bf16 = OutputHead(type("LM", (), {"get_output_embeddings": lambda self: torch.nn.Linear(8, 16).bfloat16()})())
    assert bf16.transposed is None  # bfloat16 kernels read the layout well: no copy


def test_fixed_shape_decode_equals_each_request_alone(engine):
    """The decode step a CUDA graph replays on a GPU (batch padded to a bucket onto a scratch slot, attention over
    the whole slot), run eagerly here: same answers as each request alone."""
    jobs = [job(engine, "a", "hello there", n=12), job(engine, "b", "compare them", IMGS[:2], n=12),
            job(engine, "c", "a different and rather longer question about charts", n=9),
            job(engine, "d", "what is this", IMGS[2:], n=7)]
    got, sched, _ = serve(engine, jobs, stagger=0.02, max_num_seqs=3, graphs=True)
    assert sched.runner.graphs and sched.runner.buckets == [1, 2, 3]
    assert {len(s.index) for s in sched.runner._static.values()} <= {1, 2, 3} and sched.runner._static
    texts = {j.request_id: got.text(j.request_id) for j in jobs}
    assert len(set(texts.values())) == 4
    for j in jobs:
        assert texts[j.request_id] == oracle(engine, j)[0], j.request_id


def test_static_batching_equals_each_request_alone(engine):
    """The kept static path (left padding in one batch) on the same input-sensitive model."""
    jobs = [job(engine, "a", "hello there", n=10), job(engine, "b", "compare them", IMGS[:2], n=10),
            job(engine, "c", "a different and rather longer question about charts", n=10)]
    out = {i: "" for i in range(len(jobs))}
    for i, ev in engine.run_batch(jobs):
        out[i] += ev.text
    assert len(set(out.values())) == 3
    for i, j in enumerate(jobs):
        assert out[i] == oracle(engine, j)[0]


def test_cache_full_load_queues_and_completes(engine):
    jobs = [job(engine, f"r{i}", f"question number {i}", IMGS[i % 2:i % 2 + 1] if i % 3 == 0 else (), n=30)
            for i in range(6)]
    got, sched, seen = serve(engine, jobs, max_num_seqs=2)
    assert sched.runner.cache.slots == 2 and seen["max_used"] == 2 and seen["max_waiting"] >= 1
    for j in jobs:
        assert got.text(j.request_id) == oracle(engine, j)[0]
    assert sched.runner.cache.used == 0 and sched.stats.finished == 6


def test_cancelling_frees_the_cache_slot(engine):
    flag = threading.Event()
    long_job = job(engine, "long", "go on forever", n=1500)  # greedy, it would end by itself after ~150 tokens
    short = job(engine, "short", "hello there", n=6)
    sched = engine.scheduler(max_num_seqs=1).start()
    got = Collector(["long", "short"])
    order = []

    def long_sink(ev):
        order.append("long")
        flag.set()  # the client goes away as soon as its answer starts
        got.sink("long")(ev)

    def short_sink(ev):
        order.append("short")
        got.sink("short")(ev)

    try:
        sched.submit(long_job, long_sink, flag.is_set)
        assert flag.wait(60)  # the long job holds the only slot (submitting both at once races their preprocessing)
        sched.submit(short, short_sink)
        assert got.done.wait(60)
    finally:
        sched.close(30)
    # the short job waited for the only slot, got it once the cancelled one released it
    assert order.index("short") > len(order) - 1 - order[::-1].index("long")
    assert got.last("long").finish_reason == "cancelled" and got.last("long").completion_tokens < 100
    assert got.text("short") == oracle(engine, short)[0]
    assert sched.runner.cache.used == 0 and sched.stats.cancelled == 1


def test_seeded_sampling_is_reproducible_whatever_runs_alongside(engine):
    def seeded(rid):
        return job(engine, rid, "tell me a story", n=12, temperature=1.0, seed=7)

    alone, _, _ = serve(engine, [seeded("alone")])
    crowd = [job(engine, "g1", "hello there", n=12), seeded("in-crowd"), job(engine, "g2", "why", IMGS[:1], n=12),
             job(engine, "s2", "tell me a story", n=12, temperature=1.0, seed=8)]
    together, _, _ = serve(engine, crowd, stagger=0.01)
    assert together.text("in-crowd") == alone.text("alone")
    assert together.text("s2") != together.text("in-crowd")  # the seed matters


def test_repeated_image_skips_the_vision_tower(engine):
    tall = IMGS[1:2]  # 300x900: a 1x2 grid + thumbnail at max_tiles=2, one tile at max_tiles=1
    first = job(engine, "first", "what is this", tall, n=6)
    later = [job(engine, "again", "and now?", tall, n=6), job(engine, "tiled-otherwise", "what is this", tall, n=6)]
    later[1].max_tiles = 1  # same bytes, another tiling plan: another entry
    sched = engine.scheduler(max_num_seqs=3).start()
    got = Collector(["first", "again", "tiled-otherwise"])
    try:
        sched.submit(first, got.sink("first"))
        deadline = time.monotonic() + 60
        while not (got.events["first"] and got.last("first").finish_reason) and time.monotonic() < deadline:
            time.sleep(0.01)
        for j in later:  # the next turns of the conversation re-send the image
            sched.submit(j, got.sink(j.request_id))
        assert got.done.wait(60)
    finally:
        sched.close(30)
    assert sched.stats.vision_hits == 1 and sched.stats.vision_misses == 2
    assert sched.stats.vision_seconds_saved > 0
    for j in [first, *later]:
        assert got.text(j.request_id) == oracle(engine, j)[0]


def test_the_front_plans_are_applied_and_checked(engine):
    img = IMGS[1]  # 300x900: the backend's own plan at max_tiles=2 would be a 1x2 grid + thumbnail
    sent = {"width": 300, "height": 900, "grid": [1, 1], "num_tiles": 1, "max_tiles": 1, "requested_max_tiles": 2}
    applied = job(engine, "applied", "what is this", [img], n=6, tiling=[sent])
    wrong_size = job(engine, "wrong", "what is this", [img], n=6, tiling=[{**sent, "width": 641}])
    bad_grid = job(engine, "grid", "what is this", [img], n=6, tiling=[{**sent, "grid": [9, 9], "num_tiles": 81}])
    too_big = job(engine, "pixels", "what is this", [img], n=6, max_image_pixels=300 * 900 - 1)
    got, _, _ = serve(engine, [applied, wrong_size, bad_grid, too_big])
    first = got.events["applied"][0]
    assert [t["num_tiles"] for t in first.tiling] == [1]
    one_tile = GenerationJob(**{**applied.__dict__, "tiling": None, "max_tiles": 1})
    assert got.text("applied") == oracle(engine, one_tile)[0]
    assert first.prompt_tokens == oracle_prompt_tokens(engine, one_tile)
    for rid, status, words in (("wrong", 400, "641x900"), ("grid", 400, "not a valid grid"),
                               ("pixels", 413, "exceeds the limit")):
        err = got.last(rid)
        assert err.finish_reason == "error" and err.error["status"] == status and words in err.error["message"], err


def oracle_prompt_tokens(engine, j) -> int:
    return engine.processor(text=j.prompt, images=j.images, max_tiles=j.max_tiles)["input_ids"].shape[1]


def test_stop_strings_follow_one_rule_in_server_and_stream(engine):
    base = job(engine, "free", "a different and rather longer question about charts", n=20)
    full = oracle(engine, base)[0]
    stop = full[5:8]
    assert len(stop) == 3 and full.index(stop) >= 1, full
    stopped = GenerationJob(**{**base.__dict__, "request_id": "stopped", "stop": [stop]})
    got, _, _ = serve(engine, [stopped])
    assert got.text("stopped") == full[: full.index(stop)] and got.last("stopped").finish_reason == "stop"
    batch = engine.processor(text=base.prompt)
    streamed = "".join(engine.model.stream(**batch, max_new_tokens=20, stop_strings=[stop]))
    assert streamed == got.text("stopped")
    ids = engine.model.generate(**batch, max_new_tokens=20, stop_strings=[stop])[0].tolist()
    kept = [t for t in ids if t != engine.tokenizer.pad_token_id]
    # ids keep the token completing the stop string; its text starts with the served answer + the stop
    assert engine.tokenizer.decode(kept).startswith(full[: full.index(stop)] + stop)


def test_kv_budget_sets_the_slot_count(engine):
    shape = CacheShape.of(engine.model.language_model.config, 2048, torch.float32)
    cfg = engine.model.language_model.config
    per_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) \
        * 2048 * 4
    assert shape.bytes_per_slot == per_slot
    assert slots_for_budget(shape, memory_bytes=5 * per_slot + 1, max_num_seqs=None) == 5
    assert slots_for_budget(shape, memory_bytes=5 * per_slot, max_num_seqs=3) == 3
    sched = engine.scheduler(kv_cache_memory=4 * per_slot, max_num_seqs=64)
    try:
        assert sched.runner.cache.slots == 4 and sched.runner.cache.nbytes == 4 * per_slot
    finally:
        sched.close(5)
    with pytest.raises(ValueError, match="holds no sequence"):
        slots_for_budget(shape, memory_bytes=per_slot - 1, max_num_seqs=None)


def test_cpu_threads_split_the_cores_and_close_restores_them(engine):
    """On CPU decoding and the preprocessing workers share the cores instead of each using all of them; threads
    started after close() get torch's thread count as it was before."""
    before = torch.get_num_threads()  # the suite runs torch on one thread; this test needs two to split
    torch.set_num_threads(2)
    try:
        plan = CpuThreads.plan("cpu", None, None)
        assert (plan.workers, plan.worker_threads, plan.decode_threads) == (1, 1, 1)
        jobs = [job(engine, "text", "hello there", n=4), job(engine, "image", "what is this", IMGS[:1], n=4)]
        got, sched, _ = serve(engine, jobs)
        assert got.text("text") == oracle(engine, jobs[0])[0] and got.text("image") == oracle(engine, jobs[1])[0]
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


def test_decoding_takes_every_core_while_nothing_is_prepared():
    """The split holds only while a worker has work: with no job being prepared the scheduler thread decodes on
    every core, and goes back to its share when one is."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plan = CpuThreads.plan("cpu", None, None)
        plan.enter_decode()
        assert torch.get_num_threads() == 1
        plan.for_step(preparing=0)
        assert torch.get_num_threads() == 2
        plan.for_step(preparing=3)
        assert torch.get_num_threads() == 1
        gpu = CpuThreads.plan("cuda", None, None)  # on a GPU the threads only feed the device: left alone
        gpu.for_step(preparing=0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------- KV prefix reuse
def run_in_turn(engine, jobs, *, wait_first_token: bool = False, **options):
    """Submit ``jobs`` to one scheduler one after another: each after the previous one finished, or (with
    ``wait_first_token``) as soon as the previous one started decoding."""
    sched = engine.scheduler(**{"max_num_seqs": 2, "prefill_chunk": 64, **options}).start()
    got = Collector([j.request_id for j in jobs])
    try:
        for j in jobs:
            started = threading.Event()

            def sink(ev, rid=j.request_id, started=started):
                got.sink(rid)(ev)
                if wait_first_token or ev.finish_reason:
                    started.set()

            sched.submit(j, sink)
            assert started.wait(60)
        assert got.done.wait(120)
    finally:
        sched.close(30)
    return got, sched


def flipped(data: bytes) -> bytes:
    """The same size, other content: ``data`` upside down."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(buf, format="PNG")
    return buf.getvalue()


def image_positions(engine, j: GenerationJob) -> list[int]:
    ids = engine.processor(text=j.prompt, images=j.images, max_tiles=j.max_tiles)["input_ids"][0]
    return (ids == engine.model.image_token_id).nonzero().reshape(-1).tolist()


def test_next_chat_turn_reuses_the_conversation_so_far(engine):
    first = job(engine, "turn-1", "what is this", IMGS[:1], n=12)
    got, _ = run_in_turn(engine, [first])
    answer = got.text("turn-1")
    convo = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this"}]},
             {"role": "assistant", "content": answer}, {"role": "user", "content": "and the colours?"}]
    second = GenerationJob(request_id="turn-2", prompt=engine.render(convo), max_tiles=2, max_new_tokens=12,
                           images=IMGS[:1])
    got, sched = run_in_turn(engine, [first, second])
    assert got.text("turn-1") == answer
    assert got.text("turn-2") == oracle(engine, second)[0]  # the request computed from scratch, alone
    # the whole first turn (its image included) came from the cache: only the new turn was computed
    assert sched.stats.prefix_hits == 1 and sched.stats.prefix_tokens > image_positions(engine, second)[-1]
    assert sched.stats.prefix_tokens > got.events["turn-1"][0].prompt_tokens  # and the answer's first tokens

    _, off = run_in_turn(engine, [first, second], prefix_caching=False)
    assert off.stats.prefix_hits == 0 and off.stats.prefix_tokens == 0


def test_prefix_reuse_tells_images_apart(engine):
    """Same placeholder ids, other image: reuse stops where the images begin."""
    text = "Please look carefully at the following picture, then answer the question that comes after it."
    content = [{"type": "text", "text": text}, {"type": "image"}, {"type": "text", "text": "what is this"}]
    prompt = engine.render([{"role": "user", "content": content}])
    a = GenerationJob(request_id="a", prompt=prompt, max_tiles=2, max_new_tokens=12, images=IMGS[:1])
    b = GenerationJob(request_id="b", prompt=prompt, max_tiles=2, max_new_tokens=12, images=[flipped(IMGS[0])])
    got, sched = run_in_turn(engine, [a, b])
    start = image_positions(engine, b)[0]
    assert image_positions(engine, a)[0] == start >= 16
    assert sched.stats.prefix_hits == 1 and sched.stats.prefix_tokens == start
    assert got.text("b") == oracle(engine, b)[0] != got.text("a")


def test_shared_system_prompt_is_copied_from_a_running_sequence(engine):
    system = ("You are a careful assistant for a museum. Answer in one short sentence, name the objects you see, "
              "and never guess dates.")

    def chat(rid, question, n):
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return GenerationJob(request_id=rid, prompt=engine.render(msgs), max_tiles=2, max_new_tokens=n)

    jobs = [chat("first", "hello there", 40), chat("second", "what is the oldest thing here", 12)]
    got, sched = run_in_turn(engine, jobs, wait_first_token=True)
    assert len(got.events["first"]) > 1 and got.events["first"][0].batch_size == 1
    assert got.events["second"][0].batch_size == 2  # it joined while the first decoded: copied from its slot
    assert sched.stats.prefix_hits == 1 and sched.stats.prefix_tokens >= 30
    for j in jobs:
        assert got.text(j.request_id) == oracle(engine, j)[0], j.request_id


def test_prefix_cache_offers_only_written_positions():
    from nemo_eagle.serve.engine.prefix_cache import PrefixCache

    cache = PrefixCache(slots=3, min_tokens=16)
    prompt = torch.arange(100)
    cache.assign(0, prompt, 0)
    assert cache.lookup(prompt) == (None, 0)  # nothing written yet
    cache.prefilled(0, 64)  # one prompt chunk in: a sequence that joins now may copy those 64 positions only
    assert cache.lookup(prompt) == (0, 64)
    cache.prefilled(0, 100)
    assert cache.lookup(prompt) == (0, 99)  # the last position is always computed (its state gives a token)
    for token in (7, 8, 9):
        cache.decoded(0, token)
    longer = torch.cat([prompt, torch.tensor([7, 8, 5, 1])])
    assert cache.lookup(longer) == (0, 102)  # the prompt and the generated tokens up to the first difference
    other = prompt.clone()
    other[10] = -1
    assert cache.lookup(other) == (None, 0)  # 10 shared positions: under min_tokens
    cache.assign(1, other, 0)
    cache.prefilled(1, 100)
    cache.assign(0, torch.arange(5, 50), 0)  # slot 0 taken by another sequence: its old contents are gone
    assert cache.lookup(prompt) == (None, 0) and cache.lookup(other) == (1, 99)


def test_slot_cache_prefers_the_slot_holding_a_prefix_and_copies_one():
    from nemo_eagle.serve.engine.kv_cache import SlotKVCache

    cache = SlotKVCache(CacheShape(layers=2, kv_heads=1, head_dim=2, max_len=8, dtype=torch.float32), 4, "cpu")
    assert [cache.allocate() for _ in range(3)] == [0, 1, 2]
    cache.release(1)
    assert cache.allocate(prefer=2) == 1  # slot 2 is taken: the lowest free one
    cache.release(1)
    cache.release(2)
    assert cache.allocate(prefer=2) == 2 and sorted(cache.free) == [1, 3]
    for layer in range(2):
        cache.k[layer][0] = torch.arange(16.0).reshape(1, 8, 2) + layer
        cache.v[layer][0] = -torch.arange(16.0).reshape(1, 8, 2) - layer
    cache.copy_prefix(0, 3, 5)
    for layer in range(2):
        assert torch.equal(cache.k[layer][3, :, :5], cache.k[layer][0, :, :5])
        assert torch.equal(cache.v[layer][3, :, :5], cache.v[layer][0, :, :5])
        assert not cache.k[layer][3, :, 5:].any() and not cache.v[layer][3, :, 5:].any()


def test_prefix_reuse_flag_reaches_the_scheduler(engine):
    from nemo_eagle.serve.settings import settings_from_argv

    for argv, on in (([], True), (["--no-enable-prefix-caching"], False)):
        options = settings_from_argv(["--model", "tiny-eagle2", "--max-num-seqs", "2", *argv]).scheduler_options()
        sched = engine.scheduler(**options)
        try:
            assert (sched.prefix is not None) is on
        finally:
            sched.close(5)
