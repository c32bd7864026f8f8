"""Retrieval-pipeline adapters over ``EagleEmbedder`` (one import place for both).

* ``EagleEmbeddings`` (``nemo_eagle.embed.langchain``): LangChain's ``Embeddings``; needs ``langchain-core``.
* ``ColEagleProcessor`` / ``ColEagleModel`` (``nemo_eagle.embed.colpali``): colpali-engine's processor / model
  interface for multi-vector late interaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nemo_eagle.embed.colpali import ColEagleModel, ColEagleProcessor
    from nemo_eagle.embed.langchain import EagleEmbeddings

__all__ = ["ColEagleModel", "ColEagleProcessor", "EagleEmbeddings"]

_HOME = {"EagleEmbeddings": "langchain", "ColEagleProcessor": "colpali", "ColEagleModel": "colpali"}


def __getattr__(name: str):
    # Lazy, so the colpali-style classes import without langchain-core installed.
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"nemo_eagle.embed.{_HOME[name]}"), name)
    raise AttributeError(f"module 'nemo_eagle.embed.adapters' has no attribute {name!r}")
