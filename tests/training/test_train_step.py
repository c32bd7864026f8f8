"""Micro-batches with nothing to learn (every sample skipped as bad; text-only while only the projector trains):
skipped alone, and with other ranks a zero loss that still joins their gradient all-reduce."""

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


def test_empty_batch_skips_alone_and_gives_zero_gradients_with_other_ranks(tiny_ckpt):
    model = load_model(ModelSpec(config=TINY, tokenizer_from=str(tiny_ckpt)))
    empty = {"num_samples": 0, "num_skipped": 2, "sample_ids": []}
    assert model.training_step(empty, 0) is None  # one process: Lightning skips the step

    model._trainer = types.SimpleNamespace(world_size=2)  # the other rank is waiting in its backward
    loss = model.training_step(empty, 0)
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

    model._trainer = types.SimpleNamespace(world_size=2)
    loss = model.training_step(text_only, 0)
    loss.backward()
    assert float(loss) > 0 and model.model.projector.fc1.weight.grad is not None
    assert not model.model.projector.fc1.weight.grad.any()
