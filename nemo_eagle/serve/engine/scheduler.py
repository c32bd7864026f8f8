"""Iteration-level scheduling (continuous batching) over a preallocated slot KV cache.

One thread runs the loop; each iteration:
1. takes newly submitted jobs and hands the preparation of those with images (image decode, tiling, tokenising,
   the vision tower or the vision cache, the merge into the prompt embeddings) to a worker pool, so a request
   with many images does not stall the decoding of the others; a text-only job is tokenised on the spot (it
   would otherwise wait behind image work in the pool, and costs less than the hand-off);
2. admits prepared jobs in arrival order while a cache slot is free (admission control: the others wait, and
   the queue length is reported); a prompt prefix whose keys/values a slot still holds is copied, not computed
   (``prefix_cache.py``);
3. runs prompt chunks of the jobs in prefill, oldest first, up to ``prefill_chunk`` tokens in all, so a long
   image prompt never stalls the running sequences for more than one chunk;
4. runs one decode step over every sequence past its prefill; the prompts finished in step 3 get their first
   token from the same LM-head call; samples per row, streams text, and releases the slot of every sequence that
   finished or whose client cancelled.

A sequence's numbers do not depend on its neighbours: its own positions and cache slot, a mask over its own
keys, its own sampling settings and random generator. There is no preemption: a slot reserves the whole
context at admission, so a running sequence can always finish.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from nemo_eagle.modeling.detokenizer import Detokenizer
from nemo_eagle.serve.engine.prefix_cache import PrefixCache, position_keys
from nemo_eagle.serve.engine.runner import ModelRunner
from nemo_eagle.serve.engine.sampling import LogprobEntry, TokenSampler, sample_rows
from nemo_eagle.serve.engine.wire import EngineError, GenerationEvent, GenerationJob

log = logging.getLogger(__name__)

CANCEL_CHECK_S = 0.05  # how often a running job's ``cancelled`` callback is asked (it may be an IPC round trip)


@dataclass
class SchedulerStats:
    submitted: int = 0
    finished: int = 0
    cancelled: int = 0
    waiting: int = 0  # prepared, waiting for a cache slot
    preparing: int = 0
    running: int = 0
    slots: int = 0
    generated_tokens: int = 0
    steps: int = 0
    vision_hits: int = 0
    vision_misses: int = 0
    vision_seconds_saved: float = 0.0
    vision_seconds: float = 0.0
    prefix_hits: int = 0
    prefix_tokens: int = 0
    idle: bool = False  # the last iteration had nothing to do (observers: report now, it may sleep a while)


@dataclass
class CpuThreads:
    """How the scheduler shares the CPU cores (torch's intra-op threads) between decoding and preprocessing.

    On a CPU both run on the same cores: preprocessing workers running the vision tower with torch's full thread
    count while the scheduler thread decodes with it too put twice as many OpenMP threads as cores to work, and
    an OpenMP team that loses a core to the other spins at its barriers. So on CPU the cores are split while a
    worker has work: each preprocessing worker runs torch with one thread (half the cores get a worker by default)
    and decoding gets the rest; while no job is being prepared, decoding takes every core again (``for_step``).
    On a GPU the threads only feed the device and nothing is changed."""

    workers: int
    worker_threads: int | None  # None: leave torch's setting alone
    decode_threads: int | None
    original: int = 0
    current: int = 0  # the scheduler thread's torch threads now

    @classmethod
    def plan(cls, device_type: str, workers: int | None, decode_threads: int | None) -> CpuThreads:
        cores = torch.get_num_threads()
        if device_type != "cpu":
            return cls(workers or 2, None, decode_threads, cores)
        workers = workers or max(1, cores // 2)
        return cls(workers, 1, decode_threads or max(1, cores - workers), cores)

    def enter_worker(self) -> None:
        if self.worker_threads is not None:
            torch.set_num_threads(self.worker_threads)

    def enter_decode(self) -> None:
        if self.decode_threads is not None:
            torch.set_num_threads(self.decode_threads)
            self.current = self.decode_threads

    def for_step(self, preparing: int) -> None:
        """The scheduler thread's torch threads for its next step: its share of the cores while ``preparing``
        jobs keep workers busy, every core while none does (a worker's one thread idles then)."""
        if self.decode_threads is None:
            return
        want = self.decode_threads if preparing else max(self.decode_threads, self.original)
        if want != self.current:
            torch.set_num_threads(want)
            self.current = want

    def restore(self) -> None:
        """torch.set_num_threads also sets the count threads started later begin with: put the original back."""
        if self.worker_threads is not None or self.decode_threads is not None:
            torch.set_num_threads(self.original)

    def describe(self) -> str:
        per = f", {self.worker_threads} torch thread(s) each" if self.worker_threads else ""
        dec = f", decoding on {self.decode_threads} torch thread(s)" if self.decode_threads else ""
        return f"{self.workers} preprocessing worker(s){per}{dec}"


@dataclass(eq=False)
class Sequence:
    job: GenerationJob
    sink: Callable[[GenerationEvent], None]
    cancelled: Callable[[], bool]
    submitted: float = field(default_factory=time.perf_counter)
    prepared: Any = None
    future: Future | None = None
    embeds: torch.Tensor | None = None
    slot: int | None = None
    pos: int = 0  # prompt positions written into the cache
    reused: int = 0  # of them, copied from another slot's prefix
    generated: int = 0
    last_token: int = 0
    detok: Detokenizer | None = None
    sampler: TokenSampler | None = None
    logprobs: list[LogprobEntry] = field(default_factory=list)  # not yet sent
    started: bool = False
    held: str = ""
    checked: float = field(default_factory=time.monotonic)  # first asked CANCEL_CHECK_S after submission
    done: bool = False


class Scheduler:
    """Continuous batching for one ``Engine``. ``submit`` is thread-safe; events reach each job's ``sink``
    from the scheduler thread, ending with one event that has a ``finish_reason``."""

    def __init__(self, engine: Any, *, kv_cache_memory: int | None = None, max_num_seqs: int | None = 16,
                 prefill_chunk: int = 512, vision_cache_bytes: int = 256 * 2**20, preprocess_workers: int | None = None,
                 graphs: bool | None = None, decode_threads: int | None = None, prefix_caching: bool = True):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_len = engine.max_model_len
        self.runner = ModelRunner.build(engine.model, max_len=self.max_len, memory_bytes=kv_cache_memory,
                                        max_num_seqs=max_num_seqs, vision_cache_bytes=vision_cache_bytes,
                                        graphs=graphs)
        self.prefill_chunk = prefill_chunk
        self.prefix = PrefixCache(self.runner.cache.slots) if prefix_caching else None
        self.inbox: queue.SimpleQueue[Sequence] = queue.SimpleQueue()
        self.wake = threading.Event()
        self.threads = CpuThreads.plan(engine.model.device.type, preprocess_workers, decode_threads)
        self.pool = ThreadPoolExecutor(self.threads.workers, thread_name_prefix="eagle-preprocess",
                                       initializer=self.threads.enter_worker)
        self.preparing: list[Sequence] = []
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self.stats = SchedulerStats(slots=self.runner.cache.slots)
        self.closing = False
        self.thread: threading.Thread | None = None
        self.on_step: Callable[[SchedulerStats], None] | None = None
        head = self.runner.head.extra_bytes
        log.info("continuous batching: %d cache slots of %d positions (%.1f MiB), prefill chunk %d, prefix reuse %s, "
                 "vision cache %.0f MiB, %s decode%s, %s", self.runner.cache.slots, self.max_len,
                 self.runner.cache.nbytes / 2**20, prefill_chunk, "on" if prefix_caching else "off",
                 vision_cache_bytes / 2**20, "fixed-shape (CUDA graphs on GPU)" if self.runner.graphs
                 else "dynamic", f", LM head through a transposed copy ({head / 2**20:.0f} MiB)" if head else "",
                 self.threads.describe())

    # ----------------------------------------------------------------------------------------- control
    def start(self) -> Scheduler:
        if self.runner.graphs:  # capture every bucket before any other thread runs the model
            self.runner.prepare_graphs()
        self.thread = threading.Thread(target=self._loop, name="eagle-scheduler", daemon=True)
        self.thread.start()
        return self

    def submit(self, job: GenerationJob, sink: Callable[[GenerationEvent], None],
               cancelled: Callable[[], bool] | None = None) -> None:
        if self.closing:
            sink(GenerationEvent(finish_reason="error", error=EngineError(
                "the server is shutting down", status=503, code="draining").to_dict()))
            return
        self.inbox.put(Sequence(job, sink, cancelled or (lambda: False)))
        self.wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Finish every submitted job (new ones are refused), then stop the thread."""
        self.closing = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.threads.restore()

    @property
    def busy(self) -> bool:
        return bool(self.preparing or self.waiting or self.prefilling or self.decoding or not self.inbox.empty())

    # -------------------------------------------------------------------------------------------- loop
    def _loop(self) -> None:
        self.threads.enter_decode()
        while True:
            try:
                worked = self.iteration()
            except Exception as e:  # a bug: fail the jobs in flight, keep serving the next ones
                log.exception("scheduler iteration failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
                worked = True
            if self.closing and not self.busy:
                return
            if not worked:
                self.wake.wait(CANCEL_CHECK_S if self.waiting else 1.0)
                self.wake.clear()

    def iteration(self) -> bool:
        """One scheduling step; False when there was nothing to do."""
        self._take_new()
        self._collect_prepared()
        self.threads.for_step(len(self.preparing))
        self._check_cancelled()
        self._admit()
        chunks = bool(self.prefilling)
        worked = self._decode_step(self._prefill()) or chunks
        s = self.stats
        s.waiting, s.preparing, s.running = len(self.waiting), len(self.preparing), len(self.prefilling) + len(
            self.decoding)
        vc = self.runner.vision_cache
        if vc is not None:
            s.vision_hits, s.vision_misses, s.vision_seconds_saved = (
                vc.stats.hits,
                vc.stats.misses,
                vc.stats.seconds_saved,
            )
        s.vision_seconds = self.runner.vision_seconds
        if self.prefix is not None:
            s.prefix_hits, s.prefix_tokens = self.prefix.stats.hits, self.prefix.stats.tokens
        s.idle = not worked
        if self.on_step is not None:
            self.on_step(s)
        return worked

    def _take_new(self) -> None:
        while True:
            try:
                seq = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.stats.submitted += 1
            if seq.job.images:
                seq.future = self.pool.submit(self._prepare, seq.job)
                seq.future.add_done_callback(lambda _: self.wake.set())  # admit it as soon as it is ready
            else:  # text only: tokenising here costs less than a hand-off, and never queues behind image work
                seq.future = Future()
                try:
                    seq.future.set_result(self._prepare(seq.job))
                except Exception as e:  # noqa: BLE001 - reported by _collect_prepared like a worker's failure
                    seq.future.set_exception(e)
            self.preparing.append(seq)

    def _prepare(self, job: GenerationJob) -> Any:
        """In a worker: the job's inputs, and its prompt embeddings (images through the vision cache or tower)."""
        prep = self.engine.prepare(job)
        prep.sampler = self.engine.sampler(job, prep)  # compiles its grammar, if any, here and not in the loop
        if prep.prompt_tokens + job.max_new_tokens <= self.max_len:
            feats = self.runner.image_features(prep.pixels, prep.image_keys)
            prep.embeds = self.runner.embed(prep.input_ids, feats)
        if self.prefix is not None:
            prep.position_keys = position_keys(prep.input_ids, self.engine.model.image_token_id, prep.image_keys,
                                               [p.num_tokens for p in prep.plans])
        prep.pixels = []  # tiles are not needed once encoded
        return prep

    def _collect_prepared(self) -> None:
        still = []
        for seq in list(self.preparing):  # _finish removes from self.preparing
            if not seq.future.done():
                still.append(seq)
                continue
            try:
                seq.prepared = seq.future.result()
            except (EngineError, ValueError) as e:
                err = e if isinstance(e, EngineError) else EngineError(str(e))
                self._finish(seq, "error", error=err.to_dict())
                continue
            except Exception as e:
                log.exception("preprocessing failed for %s", seq.job.request_id)
                self._finish(seq, "error", error=EngineError(f"preprocessing failed: {type(e).__name__}: {e}",
                                                             status=500, code="internal_error").to_dict())
                continue
            n = seq.prepared.prompt_tokens
            if n + seq.job.max_new_tokens > self.max_len:
                self._finish(seq, "error", error=EngineError(
                    f"prompt of {n} tokens + max_tokens={seq.job.max_new_tokens} exceeds the context of "
                    f"{self.max_len} tokens", code="context_length_exceeded").to_dict())
                continue
            self.waiting.append(seq)
        # arrival order among the prepared ones, whichever worker finished first
        self.preparing = still
        if len(self.waiting) > 1:
            self.waiting = collections.deque(sorted(self.waiting, key=lambda q: q.submitted))

    def _check_cancelled(self) -> None:
        now = time.monotonic()
        for group in (self.waiting, self.prefilling, self.decoding):
            for seq in list(group):
                if now - seq.checked >= CANCEL_CHECK_S:
                    seq.checked = now
                    if seq.cancelled():
                        self._finish(seq, "cancelled")

    def _admit(self) -> None:
        cache = self.runner.cache
        while self.waiting and cache.free:
            seq = self.waiting.popleft()
            job, prep = seq.job, seq.prepared
            if self.prefix is None:
                seq.slot = cache.allocate()
            else:  # a prefix another slot holds is copied, not computed (the first prompt chunk starts after it)
                src, seq.pos = self.prefix.lookup(prep.position_keys)
                seq.slot = cache.allocate(prefer=src)
                if seq.pos and src != seq.slot:
                    cache.copy_prefix(src, seq.slot, seq.pos)
                self.prefix.assign(seq.slot, prep.position_keys, seq.pos)
                seq.reused = seq.pos
                if seq.pos:
                    log.debug("%s: %d of %d prompt positions copied from cache slot %d", job.request_id, seq.pos,
                              prep.prompt_tokens, src)
            seq.embeds, prep.embeds = prep.embeds, None
            seq.sampler, prep.sampler = prep.sampler, None
            seq.detok = Detokenizer(self.tokenizer, job.stop)
            self.prefilling.append(seq)

    def _prefill(self) -> list[tuple[Sequence, torch.Tensor]]:
        """Prompt chunks of the jobs in prefill, oldest first, ``prefill_chunk`` tokens in all this step; the jobs
        whose prompt is complete, with the last hidden state (their first token is sampled by ``_decode_step``)."""
        budget = self.prefill_chunk
        done: list[tuple[Sequence, torch.Tensor]] = []
        for seq in list(self.prefilling):
            if budget <= 0:
                break
            total = seq.embeds.shape[1]
            end = min(total, seq.pos + budget)
            last = self.runner.prefill(seq.slot, seq.embeds[:, seq.pos:end], seq.pos)
            budget -= end - seq.pos
            seq.pos = end
            if self.prefix is not None:
                self.prefix.prefilled(seq.slot, end)
            if end < total:
                break
            done.append((seq, last))
        return done

    def _decode_step(self, prefilled: list[tuple[Sequence, torch.Tensor]]) -> bool:
        """One token for every decoding sequence, and the first token of each prompt finished this step: one LM-head
        call for all of them (on Eagle2-1B the head, 151k x 896, costs most of a decode step)."""
        if not self.decoding and not prefilled:
            return False
        rows = sorted(self.decoding, key=lambda q: q.slot)
        extra = torch.stack([h for _, h in prefilled]) if prefilled else None
        logits = self.runner.decode([q.slot for q in rows], torch.tensor([q.last_token for q in rows]),
                                    torch.tensor([q.pos for q in rows]), extra)
        for q in rows:
            q.pos += 1
            if self.prefix is not None:
                self.prefix.decoded(q.slot, q.last_token)
        newcomers = [q for q, _ in prefilled]
        picks = sample_rows(logits, [q.sampler for q in rows + newcomers])
        if rows:
            self.stats.steps += 1
        for q, (token, logprob) in zip(rows, picks):
            self._emit_token(q, token, logprob)
        for q, (token, logprob) in zip(newcomers, picks[len(rows):]):
            self.prefilling.remove(q)  # after sampling: a failure there leaves it where _fail_all finds it
            q.embeds = None
            self.decoding.append(q)
            self._emit_token(q, token, logprob)
        return True

    # ------------------------------------------------------------------------------------------ events
    def _emit_token(self, seq: Sequence, token: int, logprob: LogprobEntry | None = None) -> None:
        seq.generated += 1
        if logprob is not None and token != self.tokenizer.eos_token_id:
            seq.logprobs.append(logprob)
        seq.last_token = token
        self.stats.generated_tokens += 1
        if seq.sampler.failed:
            self._finish(seq, "error", error=EngineError(seq.sampler.failed, status=500,
                                                         code="internal_error").to_dict())
            return
        if token == self.tokenizer.eos_token_id:
            self._finish(seq, "stop", seq.detok.flush())
            return
        text = seq.detok.add(token)
        if seq.detok.stopped or seq.generated >= seq.job.max_new_tokens:
            self._finish(seq, "stop" if seq.detok.stopped else "length", text + seq.detok.flush())
        elif text or not seq.started:
            self._send(seq, text)

    def _send(self, seq: Sequence, text: str = "", finish_reason: str | None = None, **extra: Any) -> None:
        if finish_reason is None and seq.started and not seq.job.stream:
            seq.held += text
            return
        kw: dict[str, Any] = dict(extra)
        if not seq.started and seq.prepared is not None and finish_reason != "error":
            seq.started = True
            kw.update(prompt_tokens=seq.prepared.prompt_tokens, tiling=seq.prepared.tiling,
                      batch_size=len(self.decoding) + (0 if seq in self.decoding else 1))
            if self.prefix is not None:
                kw["cached_tokens"] = seq.reused
        text, seq.held = seq.held + text, ""
        if seq.logprobs:
            kw["logprobs"], seq.logprobs = seq.logprobs, []
        seq.sink(GenerationEvent(text=text, finish_reason=finish_reason, completion_tokens=seq.generated, **kw))

    def _finish(self, seq: Sequence, reason: str, text: str = "", **extra: Any) -> None:
        if seq.done:
            return
        seq.done = True
        for group in (self.preparing, self.waiting, self.prefilling, self.decoding):
            if seq in group:
                group.remove(seq)
        if seq.slot is not None:
            self.runner.cache.release(seq.slot)
            seq.slot = None
        seq.embeds = None
        self.stats.finished += 1
        if reason == "cancelled":
            self.stats.cancelled += 1
        try:
            self._send(seq, text, reason, **extra)
        except Exception:
            log.exception("could not deliver the last event of %s", seq.job.request_id)

    def _fail_all(self, message: str) -> None:
        err = EngineError(message, status=500, code="internal_error").to_dict()
        for group in (self.waiting, self.prefilling, self.decoding):
            for seq in list(group):
                self._finish(seq, "error", error=err)
