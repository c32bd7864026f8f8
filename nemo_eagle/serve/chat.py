"""``POST /v1/chat/completions``: OpenAI request -> checked images + planned prompt -> backend jobs ->
a ``chat.completion`` or an SSE stream of ``chat.completion.chunk``s.

Errors found before generation (bad images, too many of them, prompt too long) are answered with a 4xx
before any byte of a stream is sent; a client that disconnects cancels its jobs in the backend.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from nemo_eagle.serve.body import LargeBodyRoute
from nemo_eagle.serve.engine import EngineError, GenerationEvent, GenerationJob, RequestPlan
from nemo_eagle.serve.limits import check_completion_tokens, check_messages, completion_cap, text_limit
from nemo_eagle.serve.logprobs import TokenText, chat_logprobs
from nemo_eagle.serve.media import FetchedImage
from nemo_eagle.serve.openapi import CHAT_STREAM, error_responses
from nemo_eagle.serve.params import job_sampling, refuse_unsupported
from nemo_eagle.serve.schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    Choice,
    ChunkChoice,
    Delta,
    ImagePart,
    PromptTokensDetails,
    Usage,
)
from nemo_eagle.serve.state import ServeState, error_response

log = logging.getLogger("nemo_eagle.serve")
router = APIRouter(route_class=LargeBodyRoute)  # large bodies are decoded off the event loop
# text-only prompts this small are planned on the event loop (see benchmarks/RESULTS.md, fixed overhead)
INLINE_PLAN_CHARS, INLINE_PLAN_MESSAGES = 2048, 16


@dataclass
class ChoiceState:
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[list] = field(default_factory=list)  # the engine's per-token records (engine/sampling.py)


@dataclass
class Completion:
    """What the backend answered for all ``n`` jobs of one request."""

    prompt_tokens: int
    tiling: list[dict[str, Any]]
    choices: list[ChoiceState] = field(default_factory=list)
    cached_tokens: int | None = None  # None: the backend does not report them (static batching, the fake backend)

    @property
    def usage(self) -> Usage:
        completion = sum(c.completion_tokens for c in self.choices)
        details = None if self.cached_tokens is None else PromptTokensDetails(cached_tokens=self.cached_tokens)
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=completion,
                     total_tokens=self.prompt_tokens + completion, prompt_tokens_details=details)


# ---------------------------------------------------------------------------------------------- request
async def collect_images(st: ServeState, messages: list[ChatMessage]) -> tuple[list[dict], list[FetchedImage]]:
    """Messages in the processor's part format, and the checked images in prompt order."""
    urls: list[tuple[str, str]] = []
    converted = []
    for i, m in enumerate(messages):
        if isinstance(m.content, str):
            converted.append({"role": m.role, "content": m.content})
            continue
        parts = []
        for j, p in enumerate(m.content):
            if isinstance(p, ImagePart):  # only user messages have them (the schema says so)
                urls.append((p.image_url.url, f"messages.{i}.content.{j}.image_url.url"))
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": p.text})
        converted.append({"role": m.role, "content": parts})
    limit = st.settings.max_images_per_request
    if len(urls) > limit:
        raise EngineError(f"{len(urls)} images in one request; this server accepts at most {limit}",
                          code="too_many_images", param="messages")
    images = await asyncio.gather(*(st.fetcher.fetch(url, name=name) for url, name in urls))
    return converted, list(images)


def check_request_size(st: ServeState, req: ChatCompletionRequest) -> int:
    """Message count, text size and completion length: checked before anything is fetched or tokenised. Returns
    the characters of message text."""
    engine = st.engine
    chars = check_messages(req.messages, max_messages=st.settings.max_messages,
                           max_chars=text_limit(st.settings, engine.tokenizer, engine.max_model_len))
    cap = completion_cap(st.settings, engine.max_model_len)
    for name in ("max_tokens", "max_completion_tokens"):  # each within the cap the OpenAPI document declares
        check_completion_tokens(getattr(req, name), name, cap)
    return chars


def _max_tokens_param(req: ChatCompletionRequest) -> str:
    return "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"


def _plan_inline(messages: int, chars: int, images: list[FetchedImage]) -> bool:
    """A small text-only request: planning it costs less than the hop to a planning thread and back."""
    return not images and messages <= INLINE_PLAN_MESSAGES and chars <= INLINE_PLAN_CHARS


def plan_request(st: ServeState, req: ChatCompletionRequest, messages: list[dict],
                 images: list[FetchedImage]) -> RequestPlan:
    """Render, tokenise and fit the tiling (blocking: the route runs it on ``st.planner``, off the event loop)."""
    prompt = st.engine.render(messages)
    sizes = [(im.width, im.height) for im in images]
    default = min(st.settings.default_max_tokens, completion_cap(st.settings, st.engine.max_model_len))
    plan = functools.partial(st.engine.plan, prompt, sizes, max_tiles=req.max_tiles,
                             default_max_tokens=default, max_tiles_cap=st.settings.max_tiles)
    try:
        return plan(max_new_tokens=req.completion_limit)
    except EngineError as e:
        if e.code != "context_length_exceeded" or req.completion_limit is None:
            raise
        try:
            plan(max_new_tokens=1)
        except EngineError:
            raise e from None  # the prompt alone does not fit: the error names the messages
        e.param = _max_tokens_param(req)  # the prompt fits: the completion length asked for is what does not
        raise


def check_sampling(st: ServeState, req: ChatCompletionRequest) -> dict[str, Any]:
    """The jobs' sampling fields; 400 for parameters this server cannot honour."""
    refuse_unsupported(req, n=req.n)
    if req.top_logprobs and not req.logprobs:
        raise EngineError("top_logprobs needs logprobs=true", param="top_logprobs")
    return job_sampling(req, vocab_size=st.engine.tokenizer.vocab_size,
                        logprobs=(req.top_logprobs or 0) if req.logprobs else None)


def make_jobs(req: ChatCompletionRequest, plan: RequestPlan, images: list[FetchedImage], cid: str, *,
              sampling: dict[str, Any] | None = None, max_image_pixels: int | None = None) -> list[GenerationJob]:
    """One job per choice; the tiling plans travel with it and the backend applies them as planned here."""
    sampling = sampling or {"temperature": req.temperature or 0.0, "top_p": req.top_p or 1.0}
    return [GenerationJob(request_id=f"{cid}-{i}", prompt=plan.prompt, max_tiles=plan.max_tiles,
                          max_new_tokens=plan.max_new_tokens, seed=None if req.seed is None else req.seed + i,
                          stop=list(req.stop or []), stream=req.stream, tiling=plan.tiling,
                          max_image_pixels=max_image_pixels, images=[im.data for im in images], **sampling)
            for i in range(req.n)]


def admission(st: ServeState, model: str) -> Any:
    """404 for another model; the response refusing a generation request now (draining, overloaded), or None."""
    if model != st.model_name:
        raise EngineError(f"model {model!r} does not exist; this server serves {st.model_name!r}", status=404,
                          code="model_not_found", param="model")
    if st.draining:
        return error_response(503, "the server is shutting down", code="draining")
    if st.active_jobs >= st.settings.max_concurrent_requests:
        return error_response(429, f"too many requests in flight (limit {st.settings.max_concurrent_requests}); "
                              "retry later", code="overloaded", headers={"Retry-After": "1"})
    return None


# ------------------------------------------------------------------------------------------------ route
@router.post("/v1/chat/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": CHAT_STREAM}},
                        **error_responses(400, 401, 404, 413, 429, 503)})
async def chat_completions(req: ChatCompletionRequest, request: Request):
    st: ServeState = request.app.state.serve
    started = time.perf_counter()
    if (refused := admission(st, req.model)) is not None:
        return refused
    sampling = check_sampling(st, req)
    if req.ignored_fields:
        log.debug("ignoring unknown fields %s", req.ignored_fields)
    chars = check_request_size(st, req)
    messages, images = await collect_images(st, req.messages)
    if _plan_inline(len(messages), chars, images):
        plan = plan_request(st, req, messages, images)
    else:
        plan = await asyncio.get_running_loop().run_in_executor(
            st.planner, functools.partial(plan_request, st, req, messages, images))
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    jobs = make_jobs(req, plan, images, cid, sampling=sampling, max_image_pixels=st.settings.max_image_pixels)
    st.metrics.images.inc(len(images))
    if any(p.reduced for p in plan.plans):
        st.metrics.tiling_reduced.inc()
    streams = [_tracked(st, job) for job in jobs]
    firsts = await first_events(streams)
    completion = Completion(prompt_tokens=firsts[0].prompt_tokens or plan.prompt_tokens, tiling=plan.tiling,
                            cached_tokens=firsts[0].cached_tokens)
    backend_tiles = [(tuple(t["grid"]), t["num_tiles"]) for t in firsts[0].tiling or []]
    if firsts[0].tiling is not None and backend_tiles != [(p.grid, p.num_tiles) for p in plan.plans]:
        await _close_all(streams)  # the backend applies the plans it is sent: a difference is a bug, not a warning
        from nemo_eagle.serve.backends import BackendError

        raise BackendError(f"the backend tiled {backend_tiles} but the plan sent was "
                           f"{[(p.grid, p.num_tiles) for p in plan.plans]}")
    st.metrics.image_tiles.inc(sum(t["num_tiles"] for t in completion.tiling))
    st.metrics.prompt_tokens.inc(completion.prompt_tokens)
    if req.stream:
        body = _sse(st, req, cid, streams, firsts, completion, started)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if all(ev.finish_reason is not None for ev in firsts):  # answered by the first events: nothing to wait for
        await _collect(st, streams, firsts, completion)
    elif not await _until_disconnect(request, _collect(st, streams, firsts, completion), streams):
        # nobody reads this; 499 (nginx's "client closed request") keeps the metrics honest
        return error_response(499, "client disconnected before the answer was complete", code="client_closed_request")
    _log_request(st, cid, plan, completion, started)
    tt = TokenText(st.engine.tokenizer, as_ids=req.return_tokens_as_token_ids)
    body = ChatCompletion(id=cid, model=st.model_name, usage=completion.usage, tiling=completion.tiling, choices=[
        Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
               logprobs=chat_logprobs(c.logprobs, req.top_logprobs or 0, tt) if req.logprobs else None)
        for i, c in enumerate(completion.choices)])
    # serialised here by pydantic: returning the model would make FastAPI walk it again with jsonable_encoder
    return Response(body.model_dump_json(), media_type="application/json")


# -------------------------------------------------------------------------------------------- streaming
async def _tracked(st: ServeState, job: GenerationJob) -> AsyncIterator[GenerationEvent]:
    """The backend's event stream for one job, with queue-depth, batch-size and cancellation metrics."""
    st.metrics.queue_depth.inc()
    st.active_jobs += 1
    finished = False
    try:
        async with aclosing(st.backend.stream(job)) as events:
            async for ev in events:
                if ev.batch_size:
                    st.metrics.batch_size.observe(ev.batch_size)
                finished = ev.finish_reason is not None
                yield ev
    finally:
        st.metrics.queue_depth.dec()
        st.active_jobs -= 1
        if not finished:
            st.metrics.cancelled.inc()


async def _first_events(streams: list[AsyncIterator[GenerationEvent]]) -> list[GenerationEvent]:
    if len(streams) == 1:  # n=1: no task to schedule
        try:
            return [await anext(streams[0])]
        except BaseException:
            await _close_all(streams)
            raise
    tasks = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_all(streams)
        raise


async def first_events(streams: list[AsyncIterator[GenerationEvent]]) -> list[GenerationEvent]:
    """The first event of every job: it carries the real prompt size, or the error, answered as a 4xx here,
    before any byte of a stream is sent."""
    firsts = await _first_events(streams)
    for ev in firsts:
        if ev.finish_reason == "error":
            await _close_all(streams)
            err = ev.error or {}
            raise EngineError(err.get("message", "generation failed"), status=int(err.get("status", 400)),
                              code=err.get("code"), param=err.get("param"))
    return firsts


async def _close_all(streams: list[AsyncIterator[GenerationEvent]]) -> None:
    for s in streams:
        await s.aclose()


def _apply(choice: ChoiceState, ev: GenerationEvent) -> None:
    choice.text += ev.text
    choice.logprobs += ev.logprobs or []
    choice.completion_tokens = max(choice.completion_tokens, ev.completion_tokens)
    if ev.finish_reason is not None:
        choice.finish_reason = ev.finish_reason


async def _merged(streams: list[AsyncIterator[GenerationEvent]]) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """Events of several jobs as they arrive, tagged with the job index."""
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, s: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for ev in s:
                queue.put_nowait((i, ev))
            queue.put_nowait((i, None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            queue.put_nowait((i, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    open_ = len(streams)
    try:
        while open_:
            i, item = await queue.get()
            if item is None:
                open_ -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await _close_all(streams)


def _raise_if_error(ev: GenerationEvent) -> None:
    if ev.finish_reason == "error":
        from nemo_eagle.serve.backends import BackendError

        raise BackendError((ev.error or {}).get("message", "generation failed"))


async def _collect(st: ServeState, streams: list, firsts: list[GenerationEvent], completion: Completion) -> None:
    completion.choices = [ChoiceState() for _ in streams]
    for c, ev in zip(completion.choices, firsts):
        _apply(c, ev)
    live = [s for s, ev in zip(streams, firsts) if ev.finish_reason is None]
    index = [i for i, ev in enumerate(firsts) if ev.finish_reason is None]
    async for k, ev in _merged(live):
        _raise_if_error(ev)
        _apply(completion.choices[index[k]], ev)
    st.metrics.completion_tokens.inc(completion.usage.completion_tokens)


async def _until_disconnect(request: Request, work: Any, streams: list) -> bool:
    """Run ``work``; if the client disconnects first, cancel it (which cancels the backend jobs) and say so."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                task.result()
                return True
            if await request.is_disconnected():
                log.info("client disconnected; cancelling %d job(s)", len(streams))
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await _close_all(streams)
                return False
    finally:
        if not task.done():
            task.cancel()


def _chunk(cid: str, created: int, model: str, choices: list[ChunkChoice], **extra: Any) -> bytes:
    c = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, **extra)
    return b"data: " + c.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def _sse(st: ServeState, req: ChatCompletionRequest, cid: str, streams: list, firsts: list[GenerationEvent],
               completion: Completion, started: float) -> AsyncIterator[bytes]:
    created, model = int(time.time()), st.model_name
    completion.choices = [ChoiceState() for _ in streams]
    first_text = True
    tt = TokenText(st.engine.tokenizer, as_ids=req.return_tokens_as_token_ids)
    try:
        for i in range(len(streams)):
            extra = {"tiling": completion.tiling} if i == 0 else {}
            yield _chunk(
                cid, created, model, [ChunkChoice(index=i, delta=Delta(role="assistant", content=""))], **extra
            )

        def piece(i: int, ev: GenerationEvent) -> bytes | None:
            nonlocal first_text
            _apply(completion.choices[i], ev)
            if ev.text and first_text:
                first_text = False
                st.metrics.ttft.observe(time.perf_counter() - started)
            reason = ev.finish_reason if ev.finish_reason in ("stop", "length") else None
            lps = chat_logprobs(ev.logprobs or [], req.top_logprobs or 0, tt) if req.logprobs and ev.logprobs else None
            if not ev.text and reason is None and lps is None:
                return None
            return _chunk(cid, created, model, [ChunkChoice(index=i, delta=Delta(content=ev.text or None),
                                                            finish_reason=reason, logprobs=lps)])

        usage = functools.partial(_chunk, cid, created, model, []) if _wants_usage(req) else None
        async for out in sse_events(st, cid, streams, firsts, completion, piece, usage, started):
            yield out
    finally:
        await _close_all(streams)


def _wants_usage(req: Any) -> bool:
    return req.stream_options is not None and req.stream_options.include_usage


async def sse_events(st: ServeState, cid: str, streams: list, firsts: list[GenerationEvent], completion: Completion,
                     piece: Callable[[int, GenerationEvent], bytes | None],
                     usage_chunk: Callable[..., bytes] | None, started: float) -> AsyncIterator[bytes]:
    """The events of a chat or completions stream after its opening chunks: every job's events as ``piece`` renders
    them (the error event last when a backend failure or the drain's deadline ends the stream), the usage chunk
    when the client asked for it, ``[DONE]``; then the token metrics and the request's log line."""
    for i, ev in enumerate(firsts):
        if (out := piece(i, ev)) is not None:
            yield out
    live = [s for s, ev in zip(streams, firsts) if ev.finish_reason is None]
    index = [i for i, ev in enumerate(firsts) if ev.finish_reason is None]
    async for item in stream_events(st, cid, live):
        if isinstance(item, bytes):  # the error event
            yield item
        elif (out := piece(index[item[0]], item[1])) is not None:
            yield out
    if usage_chunk is not None:
        yield usage_chunk(usage=completion.usage)
    yield b"data: [DONE]\n\n"
    st.metrics.completion_tokens.inc(completion.usage.completion_tokens)
    _log_request(st, cid, None, completion, started)


async def stream_events(st: ServeState, cid: str, live: list) -> AsyncIterator[tuple[int, GenerationEvent] | bytes]:
    """The events of a stream's live jobs, tagged with their index. A stream that cannot finish (the model failed,
    the backend went down, the drain timeout passed) gets its error event (bytes) last, so it still ends with
    ``[DONE]`` instead of a cut connection."""
    from nemo_eagle.serve.backends import BackendError, BackendUnavailable

    err = None
    try:
        async with aclosing(_merged(live)) as merged:
            async for k, ev in merged:
                if ev.finish_reason == "error":
                    err = {"message": (ev.error or {}).get("message", "generation failed"), "type": "server_error",
                           "code": (ev.error or {}).get("code")}
                    break
                yield k, ev
                if st.drain_expired:
                    err = {"message": "the server is shutting down: the drain timeout ended this stream",
                           "type": "service_unavailable", "code": "draining"}
                    break
    except BackendError as e:
        log.error("stream %s ended by a backend failure: %s", cid, e)
        unavailable = isinstance(e, BackendUnavailable)
        err = {"message": str(e), "type": "service_unavailable" if unavailable else "server_error",
               "code": e.code if unavailable else "backend_error"}
    if err is not None:
        yield b"data: " + json.dumps({"error": err}).encode() + b"\n\n"


def _log_request(st: ServeState, cid: str, plan: RequestPlan | None, completion: Completion, started: float) -> None:
    if st.settings.disable_log_requests:
        return
    tiles = ", ".join(f"{t['width']}x{t['height']}->{t['grid'][0]}x{t['grid'][1]}/{t['num_tiles']}t"
                      + (f" (reduced from max_tiles={t['requested_max_tiles']})" if t.get("reduced") else "")
                      for t in completion.tiling) or "none"
    cached = "" if completion.cached_tokens is None else f" cached_tokens={completion.cached_tokens}"
    log.info("%s prompt_tokens=%d%s completion_tokens=%d finish=%s images=[%s] %.3fs", cid, completion.prompt_tokens,
             cached, completion.usage.completion_tokens, ",".join(str(c.finish_reason) for c in completion.choices),
             tiles, time.perf_counter() - started)
