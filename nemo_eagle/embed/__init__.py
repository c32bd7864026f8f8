"""Retrieval with EAGLE2: the embedder, contrastive fine-tuning, vector stores and pipeline adapters."""

from __future__ import annotations

__all__ = ["EagleEmbedder", "EmbedderConfig"]


def __getattr__(name: str):
    # Lazy so `import nemo_eagle.embed.scoring` does not pull in transformers.
    if name in __all__:
        from nemo_eagle.embed import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module 'nemo_eagle.embed' has no attribute {name!r}")
