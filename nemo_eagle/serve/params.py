"""Sampling parameters of a chat or completions request -> the job's fields, checked; parameters this server
cannot honour are refused with a 400 naming them, never silently ignored."""

from __future__ import annotations

from typing import Any

from nemo_eagle.serve.engine import EngineError
from nemo_eagle.serve.engine.sampling import effective_temperature
from nemo_eagle.serve.schema import SamplingFields

# fields of OpenAI's or vLLM's API that change the answer and that this server does not implement, with the test
# of "sent with a value that asks for it" (a client sending the neutral default, e.g. tools=[], is served)
UNSUPPORTED: dict[str, Any] = {
    "tools": bool,
    "tool_choice": lambda v: v not in (None, "none"),
    "functions": bool,
    "function_call": lambda v: v not in (None, "none"),
    "use_beam_search": bool,
    "length_penalty": lambda v: v not in (None, 1, 1.0),
    "min_p": bool,
    "prompt_logprobs": lambda v: v is not None,
    "guided_grammar": lambda v: v is not None,
    "stop_token_ids": bool,
    "bad_words": bool,
    "allowed_token_ids": lambda v: v is not None,
    "ignore_eos": bool,
    "include_stop_str_in_output": bool,
    "skip_special_tokens": lambda v: v is False,
    "logits_processors": bool,
    "audio": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
    "prediction": lambda v: v is not None,
    "suffix": lambda v: v is not None,
    "add_generation_prompt": lambda v: v is False,
    "continue_final_message": bool,
    "echo": bool,  # chat only (completions has its own echo field)
}


def refuse_unsupported(req: SamplingFields, *, n: int = 1) -> None:
    """400 for the first unsupported parameter sent with a value asking for it."""
    extra = req.model_extra or {}
    for name, asks in UNSUPPORTED.items():
        if name in extra and asks(extra[name]):
            raise EngineError(f"{name!r} is not supported by this server", param=name, code="unsupported_parameter")
    best_of = extra.get("best_of")
    if best_of is not None and best_of != n:
        raise EngineError(f"best_of={best_of} is not supported (only best_of equal to n={n})", param="best_of",
                          code="unsupported_parameter")


def guide_of(req: SamplingFields) -> dict[str, Any] | None:
    """The one structured-output request among response_format, guided_* and structured_outputs, or None."""
    found: list[dict[str, Any]] = []
    rf = req.response_format
    if rf is not None and rf.type == "json_object":
        found.append({"json_object": True, "param": "response_format"})
    elif rf is not None and rf.type == "json_schema":
        found.append({"json_schema": rf.json_schema.schema_, "param": "response_format"})
    if req.guided_json is not None:
        found.append({"json_schema": req.guided_json, "param": "guided_json"})
    if req.guided_regex is not None:
        found.append({"regex": req.guided_regex, "param": "guided_regex"})
    if req.guided_choice is not None:
        found.append({"choice": req.guided_choice, "param": "guided_choice"})
    so = req.structured_outputs
    if so is not None:
        given = {k: v for k, v in (("json_schema", so.json_), ("regex", so.regex), ("choice", so.choice),
                                   ("json_object", so.json_object or None)) if v is not None}
        if len(given) != 1:
            raise EngineError("structured_outputs takes exactly one of json, regex, choice, json_object",
                              param="structured_outputs")
        found.append({**given, "param": "structured_outputs"})
    if len(found) > 1:
        raise EngineError(f"at most one structured output may be asked for, got {[f['param'] for f in found]}",
                          param=found[1]["param"])
    return found[0] if found else None


def job_sampling(req: SamplingFields, *, vocab_size: int, logprobs: int | None) -> dict[str, Any]:
    """``GenerationJob`` keyword arguments for the request's sampling (temperature, top_p and seed included)."""
    bias = req.logit_bias or {}
    for k in bias:
        if int(k) >= vocab_size:
            raise EngineError(f"logit_bias: token id {k} is outside the vocabulary of {vocab_size} tokens",
                              param="logit_bias")
    return dict(temperature=effective_temperature(req.temperature), top_p=req.top_p or 1.0,
                top_k=max(0, req.top_k or 0), presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0, repetition_penalty=req.repetition_penalty or 1.0,
                logit_bias={str(int(k)): float(v) for k, v in bias.items()} or None,
                min_tokens=req.min_tokens or 0, logprobs=logprobs, guide=guide_of(req))
