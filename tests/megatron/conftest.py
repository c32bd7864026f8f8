"""Fixtures for the megatron tests: megatron on CPU (test-only shim + a one-rank gloo world), tiny checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from megatron_cpu_shim import megatron_on_cpu
from safetensors.torch import load_file, save_file

logging.getLogger("megatron").setLevel(logging.WARNING)


def pytest_collection_modifyitems(config, items):
    # megatron-core warns at import and build time that TE/APEX are absent: expected on CPU.
    quiet = pytest.mark.filterwarnings("ignore::UserWarning:megatron")
    for item in items:
        if "megatron" in item.nodeid.split("::")[0]:
            item.add_marker(quiet)


@pytest.fixture
def megatron_cpu():
    """megatron-core on this CPU for one test; tears megatron's parallel state down afterwards."""
    from nemo_eagle.megatron import parallel

    with megatron_on_cpu():
        try:
            yield
        finally:
            parallel.shutdown()


@pytest.fixture(scope="session")
def tiny_llama_ckpt(tmp_path_factory):
    """A tiny random Llama-backbone Eagle2 checkpoint with an UNTIED lm_head (112 px tiles: 4 tokens per tile)."""
    from nemo_eagle.convert.tiny import create_tiny

    out = create_tiny(tmp_path_factory.mktemp("tiny-llama"), llm_family="llama", image_size=112, seed=3)
    tensors = load_file(str(out / "model.safetensors"))
    emb = tensors["language_model.model.embed_tokens.weight"]
    tensors["language_model.lm_head.weight"] = torch.randn(emb.shape, generator=torch.Generator().manual_seed(5)) * 0.05
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
