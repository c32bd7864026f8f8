"""Retrieval-pipeline shims over ``EagleEmbedder``.

* ``EagleEmbeddings``: LangChain's ``Embeddings`` interface (``embed_documents`` / ``embed_query``). It subclasses
  ``langchain_core.embeddings.Embeddings`` when langchain-core is installed, and is a plain duck-typed class
  otherwise. LangChain's interface is single-vector only.
* ``ColEagleProcessor`` / ``ColEagleModel``: the colpali-engine calling convention for multi-vector retrieval
  (``process_images`` / ``process_queries`` -> ``model(**batch)`` -> ``score_multi_vector``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nemo_eagle.embed import scoring
from nemo_eagle.embed.embedder import EagleEmbedder, EmbedBatch

try:  # optional: subclass LangChain's base class when it is there, so isinstance checks pass
    from langchain_core.embeddings import Embeddings as _LangChainEmbeddings
except ImportError:  # pragma: no cover - depends on the environment
    _LangChainEmbeddings = object


class EagleEmbeddings(_LangChainEmbeddings):
    """LangChain ``Embeddings`` over a single-vector ``EagleEmbedder``.

    ``embed_documents`` takes texts (and, beyond LangChain's typing, images or (image, text) pairs).
    """

    def __init__(self, embedder: EagleEmbedder, *, dimensions: int | None = None, truncate: str = "END"):
        if embedder.mode != "single":
            raise ValueError("LangChain Embeddings are single-vector; load the embedder with mode='single' "
                             "(for late interaction use ColEagleProcessor / ColEagleModel)")
        self.embedder = embedder
        self.dimensions = dimensions
        self.truncate = truncate

    def embed_documents(self, texts: list[Any]) -> list[list[float]]:
        if not texts:
            return []
        return self.embedder.embed(list(texts), "passage", truncate=self.truncate, dimensions=self.dimensions).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed([text], "query", truncate=self.truncate, dimensions=self.dimensions)[0].tolist()

    async def aembed_documents(self, texts: list[Any]) -> list[list[float]]:
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.to_thread(self.embed_query, text)


class ColEagleProcessor:
    """colpali-engine style processor: turns images / queries into model batches and scores multi-vectors."""

    def __init__(self, embedder: EagleEmbedder, *, truncate: str = "END"):
        if embedder.mode != "multi":
            raise ValueError("ColEagleProcessor needs a multi-vector embedder (mode='multi')")
        self.embedder = embedder
        self.truncate = truncate

    def process_images(self, images: Sequence[Any]) -> dict[str, Any]:
        """Images (or (image, text) pairs) -> a batch for ``ColEagleModel(**batch)``."""
        return {"batch": self.embedder.prepare(list(images), "passage", self.truncate)}

    def process_queries(self, queries: Sequence[str]) -> dict[str, Any]:
        return {"batch": self.embedder.prepare(list(queries), "query", self.truncate)}

    def process_texts(self, texts: Sequence[str]) -> dict[str, Any]:
        """Text passages (documents without an image)."""
        return {"batch": self.embedder.prepare(list(texts), "passage", self.truncate)}

    @staticmethod
    def score_multi_vector(qs: Tensor | Sequence[Tensor], ps: Tensor | Sequence[Tensor], batch_size: int = 128,
                           device: str | torch.device | None = None) -> Tensor:
        """(N_q, N_p) MaxSim scores.

        ``qs`` / ``ps`` are lists of (T_i, D) tensors, or padded (N, T, D) tensors as ``ColEagleModel`` returns
        them. All-zero rows are padding (a real vector has unit length) and never match, in either form.
        """
        q, qm = _padded(qs)
        p, pm = _padded(ps)
        if device is not None:
            q, qm, p, pm = q.to(device), qm.to(device), p.to(device), pm.to(device)
        rows = [scoring.maxsim(q[i:i + batch_size], qm[i:i + batch_size], p, pm, doc_chunk=batch_size)
                for i in range(0, q.shape[0], batch_size)]
        return torch.cat(rows).cpu()


def _padded(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(x, Tensor):
        if x.dim() != 3:
            raise ValueError(f"expected padded multi-vectors (N, T, D), got shape {tuple(x.shape)}")
        return x.float(), x.abs().sum(-1) > 0
    return scoring.pad_multi([v.float()[v.abs().sum(-1) > 0] for v in x])


class ColEagleModel:
    """colpali-engine style model: ``model(**batch)`` -> padded (B, T, D) multi-vectors (zeros at padding)."""

    def __init__(self, embedder: EagleEmbedder):
        if embedder.mode != "multi":
            raise ValueError("ColEagleModel needs a multi-vector embedder (mode='multi')")
        self.embedder = embedder

    def __call__(self, batch: EmbedBatch) -> Tensor:
        with torch.inference_mode():
            vectors, mask = self.embedder(batch)
        return (vectors * mask[..., None]).cpu()

    def eval(self) -> ColEagleModel:
        self.embedder.eval()
        return self
