"""Micro-batches with nothing to learn (every sample skipped as bad; text-only while only the projector trains):
skipped alone, and with other ranks a zero loss that still joins their gradient all-reduce; and the DDP loss
weighting that makes the averaged gradient a token mean over every rank."""

from __future__ import annotations

import types

import torch

from nemo_eagle.training.build import load_model
from nemo_eagle.training.config import ModelSpec

TINY = {"vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 28, "patch_size": 14},
        "llm": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128, "max_position_embeddings": 512},
        "tiling": {"tile_size": 28, "max_tiles": 1}}


def two_ranks(other_rank_tokens: float = 0.0):
    """A stand-in trainer of two DDP ranks whose sum-reduce adds the other rank's label-token count."""
    reduced = []

    def reduce(t, reduce_op):
        assert reduce_op == "sum"
        reduced.append(float(t))
        return t + other_rank_tokens

    return types.SimpleNamespace(world_size=2, strategy=types.SimpleNamespace(reduce=reduce)), reduced


def test_empty_batch_skips_alone_and_gives_zero_gradients_with_other_ranks(tiny_ckpt):
    model = load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt)))
    empty = {"num_samples": 0, "num_skipped": 2, "sample_ids": []}
    assert model.training_step(empty, 0) is None  # one process: Lightning skips the step

    model._trainer, reduced = two_ranks(7.0)  # the other rank is waiting in its backward
    loss = model.training_step(empty, 0)
    assert reduced == [0.0]  # it still joined the token-count reduce, contributing nothing
    assert loss.requires_grad and float(loss) == 0.0
    loss.backward()
    trainable = [p for p in model.model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for p in trainable)


def test_text_only_batch_while_only_the_projector_trains(tiny_ckpt):
    from nemo_eagle.training.config import FreezeConfig
    from nemo_eagle.training.peft import set_trainable

    model = load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt)))
    set_trainable(model.model, FreezeConfig(vision=True, llm=True))  # stage 1
    ids = torch.randint(0, 400, (1, 8), generator=torch.Generator().manual_seed(0))
    text_only = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids), "position_ids": None,
                 "pixel_values": None, "num_samples": 1, "num_skipped": 0}
    assert model.training_step(text_only, 0) is None  # no graph to backpropagate: Lightning skips the step

    model._trainer, _ = two_ranks(3.0)
    loss = model.training_step(text_only, 0)
    loss.backward()
    assert float(loss) > 0 and model.model.projector.fc1.weight.grad is not None
    assert not model.model.projector.fc1.weight.grad.any()


def test_ddp_loss_is_weighted_by_the_rank_token_share(tiny_ckpt):
    model = load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt)))
    ids = torch.randint(0, 400, (1, 10), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :4] = -100  # shifted labels are positions 1..9; 1..3 are masked: 6 label tokens on this rank
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "position_ids": None,
             "pixel_values": None, "num_samples": 1, "num_skipped": 0}
    mean = model.training_step(batch, 0)  # one process: the plain token mean
    model.log = lambda *args, **kwargs: None  # Lightning's logger needs a real trainer; not under test here
    model._trainer, reduced = two_ranks(14.0)  # the other rank has 14 label tokens this step
    weighted = model.training_step(batch, 0)
    assert reduced == [6.0]
    # DDP divides the summed gradients by 2: 2 * 6/20 * mean == (sum of this rank's token losses) / 20
    torch.testing.assert_close(weighted, mean * (6 * 2 / 20))
