"""Per-sequence sampling for the engine (continuous scheduler and static batches): logits processors, structured
output, the choice of the next token and its log-probabilities.

The processing order follows vLLM's sampler: grammar mask, ``min_tokens`` (end of turn masked), ``logit_bias``,
``repetition_penalty`` (CTRL / transformers: over prompt and generated tokens, positive logits divided, negative
ones multiplied), ``frequency_penalty`` and ``presence_penalty`` (OpenAI: ``count * frequency + (count > 0) *
presence`` subtracted, over generated tokens), then temperature and top-k / top-p (``generation.warp``).

Log-probabilities are those of the distribution the token is drawn from: ``log_softmax`` of the processed logits
(greedy: after the processors, at temperature 1 and without top-p; sampling: after temperature and top-p). Tokens
that distribution excludes report ``-9999.0`` (OpenAI's value for "very unlikely").

Everything is per sequence (its own counts, grammar matcher and random generator), so a request's tokens never
depend on what it is batched with. Structured output uses llguidance (see the README for why).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nemo_eagle.modeling.generation import draw, warp
from nemo_eagle.serve.engine.wire import EngineError, GenerationJob

log = logging.getLogger(__name__)

GREEDY_BELOW = 1e-5  # a temperature under this is greedy (dividing by it overflows float32); vLLM uses the same
EXCLUDED_LOGPROB = -9999.0
MAX_TOP_LOGPROBS = 20

# a token's log-probability record: [token id, logprob, [[alternative id, logprob], ...]]
LogprobEntry = list


def effective_temperature(temperature: float | None) -> float:
    """0 (greedy) for anything under ``GREEDY_BELOW``, else the temperature."""
    t = float(temperature or 0.0)
    return 0.0 if t < GREEDY_BELOW else t


class Grammars:
    """Compiles a job's ``guide`` into an llguidance matcher over one tokenizer (built once, on first use)."""

    def __init__(self, tokenizer: Any, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._ll: Any = None
        self._lock = threading.Lock()

    def _lltokenizer(self) -> Any:
        with self._lock:
            if self._ll is None:
                import llguidance

                self._ll = llguidance.LLTokenizer(self.tokenizer.backend.to_str(), n_vocab=self.vocab_size,
                                                  eos_token=self.tokenizer.eos_token_id)
            return self._ll

    def matcher(self, guide: dict[str, Any]) -> Any:
        """``guide`` is one of ``{"json_schema": {...}}``, ``{"json_object": true}``, ``{"regex": "..."}``,
        ``{"choice": [...]}``, with ``"param"`` naming the request field it came from."""
        import llguidance

        param = guide.get("param", "response_format")
        compact = {"whitespace_flexible": False}  # no free whitespace: a small model cannot wander in blanks
        if "json_schema" in guide:
            schema = guide["json_schema"]
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema if isinstance(schema, str) else json.dumps(schema), overrides=compact)
        elif guide.get("json_object"):
            grammar = llguidance.LLMatcher.grammar_from_json_schema('{"type": "object"}', overrides=compact)
        elif "regex" in guide:
            grammar = llguidance.LLMatcher.grammar_from_regex(guide["regex"])
        elif "choice" in guide:
            grammar = llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(str(c)) for c in guide["choice"]))
        else:
            raise EngineError(f"unknown structured output {sorted(guide)}", param=param)
        problem = llguidance.LLMatcher.validate_grammar(grammar)
        if problem:
            raise EngineError(f"invalid {param}: {problem.strip().splitlines()[0]}", param=param)
        m = llguidance.LLMatcher(self._lltokenizer(), grammar)
        if m.is_error():
            raise EngineError(f"invalid {param}: {m.get_error()}", param=param)
        return m


@dataclass
class SamplingParams:
    """What a job asks of the sampler (``GenerationJob``'s sampling fields, checked by the REST front)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    min_tokens: int = 0
    logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k most likely ones
    guide: dict[str, Any] | None = None

    @classmethod
    def of(cls, job: GenerationJob) -> SamplingParams:
        bias = {int(k): float(v) for k, v in (job.logit_bias or {}).items()} or None
        return cls(temperature=effective_temperature(job.temperature), top_p=job.top_p, top_k=job.top_k,
                   presence_penalty=job.presence_penalty, frequency_penalty=job.frequency_penalty,
                   repetition_penalty=job.repetition_penalty, logit_bias=bias, min_tokens=job.min_tokens,
                   logprobs=job.logprobs, guide=job.guide)

    @property
    def processed(self) -> bool:
        """Whether the logits are changed before the choice (else greedy is a plain argmax)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.logit_bias or self.min_tokens or self.guide)


class TokenSampler:
    """The sampling state of one sequence: params, its random generator, token counts and grammar matcher."""

    def __init__(self, params: SamplingParams, *, eos_token_id: int, seed: int | None = None,
                 prompt_ids: Sequence[int] = (), matcher: Any = None):
        self.params, self.eos, self.matcher = params, eos_token_id, matcher
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.prompt_ids = list(prompt_ids) if params.repetition_penalty != 1.0 else []
        self.output: list[int] = []
        self._bias: Tensor | None = None
        self.failed: str | None = None  # why this sequence's sampling broke (its job ends with an error)

    @property
    def plain_greedy(self) -> bool:
        """Greedy, nothing to process, no log-probabilities: a batched argmax gives its token."""
        p = self.params
        return p.temperature == 0 and not p.processed and p.logprobs is None

    # ---------------------------------------------------------------------------------------- processing
    def process(self, logits: Tensor) -> Tensor:
        """(V,) model logits -> (V,) float32 logits of the distribution this sequence's next token is drawn from."""
        p = self.params
        x = logits.detach().float().clone()
        if self.matcher is not None:
            x = x.masked_fill(~self.allowed(x.shape[-1]).to(x.device), float("-inf"))
        if len(self.output) < p.min_tokens and self.eos < x.shape[-1]:
            if bool(torch.isfinite(torch.cat([x[:self.eos], x[self.eos + 1:]])).any()):  # the grammar may need it
                x[self.eos] = float("-inf")
        if p.logit_bias:
            if self._bias is None:
                self._bias = torch.zeros_like(x)
                for tid, b in p.logit_bias.items():
                    if tid < x.shape[-1]:
                        self._bias[tid] = b
            x += self._bias
        if p.repetition_penalty != 1.0 and (self.prompt_ids or self.output):
            ids = torch.tensor(sorted(set(self.prompt_ids) | set(self.output)), device=x.device)
            seen = x[ids]
            x[ids] = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
        if (p.frequency_penalty or p.presence_penalty) and self.output:
            counts = torch.bincount(torch.tensor(self.output), minlength=x.shape[-1])[:x.shape[-1]].to(x)
            x -= counts * p.frequency_penalty + (counts > 0).to(x) * p.presence_penalty
        if p.temperature != 0:
            x = warp(x[None], p.temperature, p.top_k, p.top_p)[0]
        return self._sane(x)

    def _sane(self, x: Tensor) -> Tensor:
        """No NaN, and at least one finite logit: when every token is excluded, the end of turn."""
        x = torch.nan_to_num(x, nan=float("-inf"))
        if not bool(torch.isfinite(x).any()):
            x = torch.full_like(x, float("-inf"))
            x[self.eos] = 0.0
        return x

    def allowed(self, vocab: int) -> Tensor:
        """(vocab,) bool: the tokens the grammar allows next (llguidance's bitmask, one bit per token, unpacked
        here: ``llguidance.torch`` would import torch.compile's machinery for a one-line masked fill)."""
        bits = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.uint8)
        unpacked = ((bits[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1).flatten().bool()
        out = torch.zeros(vocab, dtype=torch.bool)
        n = min(vocab, unpacked.numel())
        out[:n] = unpacked[:n]
        return out

    def choose(self, logits: Tensor) -> tuple[int, LogprobEntry | None]:
        """(V,) model logits -> the next token and, when asked, its log-probability record; the token is accepted."""
        x = self.process(logits)
        token = int(x.argmax()) if self.params.temperature == 0 else int(draw(x[None], self.generator)[0])
        entry = None
        if self.params.logprobs is not None:
            lp = torch.log_softmax(x, dim=-1)
            k = min(self.params.logprobs, lp.shape[-1])
            top = torch.topk(lp, k) if k else None
            alts = [[int(i), _finite(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())] if top else []
            entry = [token, _finite(float(lp[token])), alts]
        self.accept(token)
        return token, entry

    def accept(self, token: int) -> None:
        self.output.append(token)
        if self.matcher is not None and token != self.eos and not self.matcher.is_stopped():
            if not self.matcher.consume_token(token):
                raise RuntimeError(f"the grammar refused token {token}: {self.matcher.get_error()}")


def _finite(v: float) -> float:
    return v if v > EXCLUDED_LOGPROB else EXCLUDED_LOGPROB


def make_sampler(job: GenerationJob, *, eos_token_id: int, prompt_ids: Sequence[int] = (),
                 grammars: Grammars | None = None) -> TokenSampler:
    """The sampler of one job; compiling its grammar may raise ``EngineError`` (400: a bad schema or regex)."""
    params = SamplingParams.of(job)
    matcher = None
    if params.guide:
        if grammars is None:
            raise EngineError("structured output is not available on this backend", param="response_format")
        matcher = grammars.matcher(params.guide)
    return TokenSampler(params, eos_token_id=eos_token_id, seed=job.seed, prompt_ids=prompt_ids, matcher=matcher)


def sample_rows(logits: Tensor, samplers: Sequence[TokenSampler]) -> list[tuple[int, LogprobEntry | None]]:
    """(B, V) logits -> per row the next token (accepted by its sampler) and its log-probability record.
    Plain greedy rows share one argmax; the others are processed one by one."""
    plain = [r for r, s in enumerate(samplers) if s.plain_greedy]
    greedy = logits[plain].argmax(dim=-1).tolist() if plain else []
    out: list[tuple[int, LogprobEntry | None]] = [(0, None)] * len(samplers)
    for r, token in zip(plain, greedy):
        samplers[r].accept(token)
        out[r] = (token, None)
    for r, s in enumerate(samplers):
        if s.plain_greedy:
            continue
        if s.failed:
            out[r] = (s.eos, None)
            continue
        try:
            out[r] = s.choose(logits[r])
        except Exception as e:  # a bug in one sequence's sampling ends that sequence, not its neighbours
            log.exception("sampling failed for one sequence")
            s.failed = f"sampling failed: {type(e).__name__}: {e}"
            out[r] = (s.eos, None)
    return out
