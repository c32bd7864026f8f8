"""Contrastive fine-tuning on CPU: recall@1 rises on a tiny synthetic set; LoRA trains adapters only and merges."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nemo_eagle.embed import EagleEmbedder
from nemo_eagle.embed.train import (
    Collator,
    ContrastiveConfig,
    Example,
    apply_lora,
    fit,
    info_nce,
    load_examples,
    merge_lora,
    recall_at_1,
)

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket", "castle", "garden", "silver",
         "winter", "forest", "candle", "mirror", "island"]


def _synthetic() -> list[Example]:
    """Queries and passages share no words: the pairing can only be learned."""
    rng = random.Random(0)
    codes = [f"code {rng.randint(100, 999)} {rng.choice('xyzw')}" for _ in WORDS]
    return [
        Example(f"where is the {w}", c, [codes[(i + 1) % len(codes)]]) for i, (w, c) in enumerate(zip(WORDS, codes))
    ]


def test_finetune_raises_recall_at_1(tiny_ckpt):
    emb = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single")
    examples = _synthetic()
    before = recall_at_1(emb, examples)
    metrics = fit(emb, examples, ContrastiveConfig(max_steps=24, batch_size=8, learning_rate=1e-3, temperature=0.05),
                  enable_progress_bar=False)
    after = recall_at_1(emb, examples)
    assert before < 0.5 and after > before + 0.25, (before, after, metrics)
    assert not emb.training and not any(p.requires_grad for p in emb.parameters())


def test_info_nce_uses_hard_negatives_and_masks_duplicate_positives(single_embedder):
    examples = [Example("q a", "doc a", ["doc b"]), Example("q b", "doc b", ["doc a", "doc z"])]
    batch = Collator(single_embedder, num_negatives=2, truncate="END")(examples)
    assert batch.docs.input_ids.shape[0] == 2 + 3  # positives, then every hard negative
    # "doc b" is q_a's hard negative (kept) but q_b's own positive elsewhere in the pool (masked for q_b).
    assert batch.false_negatives.tolist() == [[False, False, False, True, False], [False, False, True, False, False]]
    with torch.no_grad():
        loss, _ = info_nce(single_embedder, batch, 0.05)
        q = single_embedder(batch.queries)[0]
        d = single_embedder(batch.docs)[0]
    logits = (q @ d.T) / 0.05
    logits[0, 3] = logits[1, 2] = float("-inf")
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(loss, want)


def test_lora_trains_adapters_only_then_merges(tiny_ckpt):
    emb = EagleEmbedder.from_pretrained(tiny_ckpt, mode="multi", projection_dim=16)
    cfg = ContrastiveConfig(max_steps=3, batch_size=4, learning_rate=1e-2, lora=True, lora_rank=4)
    base = {k: v.clone() for k, v in emb.model.state_dict().items()}
    head = emb.projection.weight.clone()
    examples = _synthetic()[:8]
    fit(emb, examples, cfg, enable_progress_bar=False)
    after = emb.model.state_dict()
    assert set(after) == set(base)  # merged: plain Linear modules and the original names again
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert changed and all(".self_attn." in k or ".mlp." in k for k in changed)
    assert not any(k.startswith(("vision.", "projector.")) for k in changed)
    assert not torch.equal(head, emb.projection.weight)  # the multi-vector head trains too
    assert apply_lora(emb, cfg) and merge_lora(emb) == 14  # 2 layers x 7 projections


def test_load_examples(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.png").write_bytes(b"")
    rows = [
        {"query": "q", "positive": {"image": "img/p.png", "text": "t"}, "negatives": ["n"]},
        {"query": "q2", "positive": "p"},
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ex = load_examples(tmp_path / "train.jsonl")
    assert ex[0].positive == {"image": str(tmp_path / "img" / "p.png"), "text": "t"} and ex[1].negatives == []
    (tmp_path / "bad.jsonl").write_text('{"query": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: each line needs 'query' and 'positive'"):
        load_examples(tmp_path / "bad.jsonl")
    (tmp_path / "missing.jsonl").write_text('{"query": "q", "positive": {"image": "nope.png"}}\n')
    with pytest.raises(FileNotFoundError, match="nope.png not found"):
        load_examples(tmp_path / "missing.jsonl")
