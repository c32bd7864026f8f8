"""``POST /v1/completions``: OpenAI's (legacy) text completions over raw prompt text, with the sampling
parameters, structured output and log-probabilities of chat (``params.py``, ``engine/sampling.py``).

The prompt is sent to the model as typed (no chat template), text only. Special-token text typed in it (e.g.
``<|im_start|>``) is tokenised as plain text, the rule chat, embeddings and ranking follow, so a completions
prompt cannot forge control tokens either; image markup and image placeholders are refused (400). A list of
prompts is answered as ``n`` choices per prompt, in prompt order; choice ``j`` of every prompt uses ``seed + j``.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from nemo_eagle.serve.body import LargeBodyRoute
from nemo_eagle.serve.chat import (
    ChoiceState,
    Completion,
    _apply,
    _close_all,
    _collect,
    _log_request,
    _tracked,
    _until_disconnect,
    _wants_usage,
    admission,
    first_events,
    sse_events,
)
from nemo_eagle.serve.engine import RESERVED_MARKUP, EngineError, GenerationEvent, GenerationJob, RequestPlan
from nemo_eagle.serve.limits import check_completion_tokens, completion_cap, text_limit
from nemo_eagle.serve.logprobs import TokenText, completion_logprobs
from nemo_eagle.serve.openapi import ERROR_REF, error_responses
from nemo_eagle.serve.params import job_sampling, refuse_unsupported
from nemo_eagle.serve.schema import CompletionChoice, CompletionRequest, TextCompletion, Usage
from nemo_eagle.serve.state import ServeState, error_response

router = APIRouter(route_class=LargeBodyRoute)  # large bodies are decoded off the event loop
STREAM = {  # one event of the stream, in the form openapi.CHAT_STREAM uses
    "description": "`stream: true`: server-sent events, each `data:` a text_completion (or an error that ends the "
                   "stream), then `data: [DONE]`",
    "itemSchema": {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
        {"type": "string", "contentMediaType": "application/json",
         "contentSchema": {"anyOf": [{"$ref": "#/components/schemas/TextCompletion"}, {"$ref": ERROR_REF}]}},
        {"const": "[DONE]"}]}}},
}


def raw_prompt(st: ServeState, text: str, param: str) -> str:
    """A typed prompt as the engine takes it: special-token text marked as plain text, image markup refused."""
    for token in RESERVED_MARKUP:
        if token in text:
            raise EngineError(f"the prompt may not contain the reserved image markup {token!r}", param=param)
    if st.engine.processor.count_image_placeholders(text):
        raise EngineError("the prompt may not contain image placeholders: completions take text only", param=param)
    return st.engine.tokenizer.protect(text)


def check_request_size(st: ServeState, req: CompletionRequest) -> None:
    """Prompt characters and completion length, before anything is tokenised (``limits.py``, as chat)."""
    limit = text_limit(st.settings, st.engine.tokenizer, st.engine.max_model_len)
    total = sum(len(p) for p in req.prompts)
    if total > limit:
        raise EngineError(f"the prompts hold {total} characters; this server accepts at most {limit} per request",
                          code="text_too_long", param="prompt")
    check_completion_tokens(req.max_tokens, "max_tokens", completion_cap(st.settings, st.engine.max_model_len))


def plan_prompts(st: ServeState, req: CompletionRequest) -> list[RequestPlan]:
    """Check, tokenise and fit each prompt (blocking: the route runs it on ``st.planner``, off the event loop)."""
    many = not isinstance(req.prompt, str)
    default = min(st.settings.default_max_tokens, completion_cap(st.settings, st.engine.max_model_len))
    plans = []
    for i, p in enumerate(req.prompts):
        param = f"prompt.{i}" if many else "prompt"
        plan = functools.partial(st.engine.plan, raw_prompt(st, p, param), [], max_tiles=None,
                                 default_max_tokens=default)
        try:
            plans.append(plan(max_new_tokens=req.max_tokens))
        except EngineError as e:
            if e.param != "messages":
                raise
            e.param = param  # the engine names chat's field; here the prompt, or max_tokens when the prompt fits
            if req.max_tokens is not None and e.code == "context_length_exceeded":
                try:
                    plan(max_new_tokens=1)
                    e.param = "max_tokens"
                except EngineError:
                    pass
            raise e from None
    return plans


def make_jobs(req: CompletionRequest, plans: list[RequestPlan], cid: str, sampling: dict[str, Any]
              ) -> list[GenerationJob]:
    return [GenerationJob(request_id=f"{cid}-{p * req.n + j}", prompt=plan.prompt, max_tiles=None,
                          max_new_tokens=plan.max_new_tokens, seed=None if req.seed is None else req.seed + j,
                          stop=list(req.stop or []), stream=req.stream, tiling=[], **sampling)
            for p, plan in enumerate(plans) for j in range(req.n)]


@router.post("/v1/completions", response_model=TextCompletion,
             responses={200: {"content": {"text/event-stream": STREAM}},
                        **error_responses(400, 401, 404, 413, 429, 503)})
async def completions(req: CompletionRequest, request: Request):
    st: ServeState = request.app.state.serve
    started = time.perf_counter()
    if (refused := admission(st, req.model)) is not None:
        return refused
    refuse_unsupported(req, n=req.n)
    if req.echo and req.logprobs is not None:
        raise EngineError("echo with logprobs needs the prompt's log-probabilities, which this server does not "
                          "return", param="echo", code="unsupported_parameter")
    sampling = job_sampling(req, vocab_size=st.engine.tokenizer.vocab_size, logprobs=req.logprobs)
    check_request_size(st, req)
    plans = await asyncio.get_running_loop().run_in_executor(st.planner, functools.partial(plan_prompts, st, req))
    cid = f"cmpl-{uuid.uuid4().hex}"
    streams = [_tracked(st, job) for job in make_jobs(req, plans, cid, sampling)]
    firsts = await first_events(streams)
    heads = [firsts[p * req.n] for p in range(len(plans))]  # each prompt's first choice: the prompt counted once
    prompt_tokens = sum(ev.prompt_tokens or plan.prompt_tokens for ev, plan in zip(heads, plans))
    cached = None if any(ev.cached_tokens is None for ev in heads) else sum(ev.cached_tokens for ev in heads)
    completion = Completion(prompt_tokens=prompt_tokens, tiling=[], cached_tokens=cached)
    st.metrics.prompt_tokens.inc(prompt_tokens)
    tt = TokenText(st.engine.tokenizer, as_ids=req.return_tokens_as_token_ids)
    if req.stream:
        body = _sse(st, req, cid, streams, firsts, completion, tt, started)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if not await _until_disconnect(request, _collect(st, streams, firsts, completion), streams):
        return error_response(499, "client disconnected before the answer was complete", code="client_closed_request")
    _log_request(st, cid, None, completion, started)
    prompts = req.prompts
    choices = []
    for k, c in enumerate(completion.choices):
        head = prompts[k // req.n] if req.echo else ""
        lps = completion_logprobs(c.logprobs, req.logprobs, tt) if req.logprobs is not None else None
        choices.append(CompletionChoice(index=k, text=head + c.text, logprobs=lps, finish_reason=c.finish_reason))
    return TextCompletion(id=cid, model=st.model_name, choices=choices, usage=completion.usage)


def _chunk(cid: str, created: int, model: str, choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
    c = TextCompletion(id=cid, created=created, model=model, choices=choices, usage=usage)
    return b"data: " + c.model_dump_json(exclude_none=True).encode() + b"\n\n"


async def _sse(st: ServeState, req: CompletionRequest, cid: str, streams: list, firsts: list[GenerationEvent],
               completion: Completion, tt: TokenText, started: float) -> AsyncIterator[bytes]:
    created, model, prompts = int(time.time()), st.model_name, req.prompts
    completion.choices = [ChoiceState() for _ in streams]
    offsets = [0] * len(streams)  # text_offset of the next token of each choice
    try:
        if req.echo:
            for k in range(len(streams)):
                offsets[k] = len(prompts[k // req.n])
                yield _chunk(cid, created, model, [CompletionChoice(index=k, text=prompts[k // req.n])])

        def piece(k: int, ev: GenerationEvent) -> bytes | None:
            _apply(completion.choices[k], ev)
            reason = ev.finish_reason if ev.finish_reason in ("stop", "length") else None
            lps = None
            if req.logprobs is not None and ev.logprobs:
                lps = completion_logprobs(ev.logprobs, req.logprobs, tt, offset=offsets[k])
                offsets[k] += sum(len(bytes(tt.bytes(r[0])).decode("utf-8", errors="replace")) for r in ev.logprobs)
            if not ev.text and reason is None and lps is None:
                return None
            return _chunk(cid, created, model, [CompletionChoice(index=k, text=ev.text, logprobs=lps,
                                                                 finish_reason=reason)])

        usage = functools.partial(_chunk, cid, created, model, []) if _wants_usage(req) else None
        async for out in sse_events(st, cid, streams, firsts, completion, piece, usage, started):
            yield out
    finally:
        await _close_all(streams)
