"""An independent re-scoring for the sampling tests: one full ``EagleModel`` forward over prompt + answer (no KV
cache, no scheduler), then the README's definitions applied by hand, in float64, token by token."""

from __future__ import annotations

import math

import torch

EXCLUDED = -9999.0


@torch.inference_mode()
def reference_logprobs(model, prompt_ids: list[int], out_ids: list[int], *, temperature: float = 0.0,
                       top_p: float = 1.0, presence: float = 0.0, frequency: float = 0.0, repetition: float = 1.0,
                       bias: dict[int, float] | None = None) -> list[torch.Tensor]:
    """Per answer token, the (V,) log-probabilities of the distribution it was drawn from."""
    ids = torch.tensor([prompt_ids + out_ids])
    logits = model(input_ids=ids).logits[0].double()
    out = []
    for t in range(len(out_ids)):
        x = logits[len(prompt_ids) - 1 + t].clone()
        before = out_ids[:t]
        for tok, b in (bias or {}).items():
            x[tok] += b
        if repetition != 1.0:
            for tok in set(prompt_ids) | set(before):
                x[tok] = x[tok] / repetition if x[tok] > 0 else x[tok] * repetition
        for tok in set(before):
            x[tok] -= frequency * before.count(tok) + presence
        if temperature:
            x = x / temperature
        lp = torch.log_softmax(x, -1)
        if top_p < 1.0:
            order = torch.argsort(lp, descending=True)
            keep, mass = [], 0.0
            for tok in order.tolist():
                keep.append(tok)
                mass += math.exp(lp[tok])
                if mass >= top_p:
                    break
            kept = torch.full_like(x, float("-inf"))
            kept[keep] = x[keep]
            lp = torch.log_softmax(kept, -1)
        out.append(lp)
    return out


def token_ids(tokens: list[str]) -> list[int]:
    """Ids of tokens returned as ``token_id:<id>`` (``return_tokens_as_token_ids``)."""
    assert all(t.startswith("token_id:") for t in tokens), tokens
    return [int(t.split(":", 1)[1]) for t in tokens]


def assert_matches(server: list[tuple[int, float, list[tuple[int, float]]]], reference: list[torch.Tensor],
                   k: int) -> None:
    """Each chosen token's logprob and its top-k alternatives equal the reference within 1e-4."""
    assert len(server) == len(reference) > 0
    for (tok, lp, top), ref in zip(server, reference):
        expected = max(float(ref[tok]), EXCLUDED)
        assert lp <= 0 and abs(lp - expected) < 1e-4, (tok, lp, expected)
        assert len(top) == k
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        best = torch.topk(ref, k)
        for (alt, v), rv in zip(top, best.values.tolist()):
            assert abs(v - max(rv, EXCLUDED)) < 1e-4 and abs(max(float(ref[alt]), EXCLUDED) - max(rv, EXCLUDED)) < 1e-4
        if k and float(ref[tok]) >= best.values[-1] + 1e-6:
            assert tok in [a for a, _ in top]
