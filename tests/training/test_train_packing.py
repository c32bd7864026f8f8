"""Packed and padded batches give the same loss, logits and gradients (no attention across packed samples)."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_eagle.data.collate import EagleCollator
from nemo_eagle.data.datasets import ConversationDataset
from nemo_eagle.training.build import load_model
from nemo_eagle.training.config import ModelSpec

TINY = {"vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 28, "patch_size": 14},
        "llm": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128, "max_position_embeddings": 2048},
        "tiling": {"tile_size": 28, "max_tiles": 4}}


@pytest.fixture(scope="module")
def samples(tiny_ckpt, tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("pack")
    recs = []
    for i, size in enumerate([(28, 28), (56, 28), (28, 84)]):  # 1, 3 and 4 tiles
        Image.new("RGB", size, (60 * i, 255 - 60 * i, 7)).save(root / f"{i}.png")
        recs.append(
            {
                "id": f"p{i}",
                "image": f"{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe." + " more" * i},
                    {"from": "gpt", "value": "A colour." * (i + 1)},
                    {"from": "human", "value": "Sure?"},
                    {"from": "gpt", "value": "Yes" + "!" * i},
                ],
            }
        )
    (root / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    model = load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt)))
    ds = ConversationDataset(str(root / "d.jsonl"), model.processor)
    return model, [ds[(i, 4)] for i in range(len(ds))]


def _run(model, batch):
    model.zero_grad()
    out = model(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("packing_mask", ["position_ids", "block"])
def test_packed_equals_padded(samples, attn, packing_mask):
    model, encoded = samples
    model = model.double()
    model.model.language_model.config._attn_implementation = attn
    model.model.vision.tower.config._attn_implementation = attn
    assert [s["num_tiles"] for s in encoded] == [[1], [3], [4]]
    pad = model.processor.tokenizer.pad_token_id
    padded = EagleCollator(pad)(encoded)
    packed = EagleCollator(pad, pack=True, packing_mask=packing_mask, pad_to_multiple_of=16)(encoded)
    assert packed["input_ids"].shape[0] == 1 and padded["input_ids"].shape[0] == 3

    # float64 model; eager attention runs its softmax in float32, so its tolerance is float32's
    tol = {"rtol": 1e-9, "atol": 1e-12} if attn == "sdpa" else {"rtol": 1e-5, "atol": 1e-8}
    out_a, grads_a = _run(model, padded)
    out_b, grads_b = _run(model, packed)
    torch.testing.assert_close(out_b.loss, out_a.loss, **tol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], **tol, msg=lambda m, name=name: f"{name}: {m}")

    # every packed sample sees only itself: its logits equal those of the sample alone
    start = 0
    for i, s in enumerate(encoded):
        n = s["input_ids"].numel()
        alone = EagleCollator(pad)([s])
        with torch.no_grad():
            ref = model(alone).logits[0]
        torch.testing.assert_close(out_b.logits[0, start:start + n].detach(), ref, **tol)
        torch.testing.assert_close(out_a.logits[i, :n].detach(), ref, **tol)
        start += n


def test_attention_crossing_samples_would_be_detected(samples):
    """Control: the same packed row WITHOUT the boundary information (plain causal) gives a different loss."""
    model, encoded = samples
    model = model.double()
    pad = model.processor.tokenizer.pad_token_id
    packed = EagleCollator(pad, pack=True)(encoded)
    padded = EagleCollator(pad)(encoded)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1])[None])
    with torch.no_grad():
        assert not torch.allclose(model(leaky).loss, model(padded).loss, rtol=1e-6, atol=0)
