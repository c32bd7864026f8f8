"""LangChain ``Embeddings`` over a single-vector ``EagleEmbedder`` (needs ``langchain-core``).

Built the way LangChain's own integrations are: a pydantic model whose fields are its settings, constructed from a
checkpoint (``EagleEmbeddings(model="nvidia/Eagle2-1B", device="cuda")``) or around an embedder already loaded
(``EagleEmbeddings(embedder=emb)``). LangChain's interface is one vector per text; for late interaction use
``nemo_eagle.embed.colpali``.
"""

from __future__ import annotations

from typing import Any

import torch
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nemo_eagle.embed import scoring
from nemo_eagle.embed.embedder import EagleEmbedder
from nemo_eagle.embed.inputs import EmbedInput, check_truncate


class EagleEmbeddings(BaseModel, Embeddings):
    """EAGLE2 embeddings for LangChain vector stores and retrievers.

    Example:
        >>> emb = EagleEmbeddings(model="nvidia/Eagle2-1B", device="cuda", dimensions=512)
        >>> store = InMemoryVectorStore.from_texts(["a red car", "a blue sky"], embedding=emb)

    ``embed_documents`` embeds passages (and, beyond LangChain's typing, images or ``(image, text)`` pairs);
    ``embed_query`` embeds a query, with the checkpoint's query prefix. An empty or blank text is embedded like any
    other (it is the prefix alone), as LangChain's own integrations do, rather than refused.
    """

    model: str | None = Field(default=None, description="checkpoint directory, .nemo file or hub id to load")
    mode: str = Field(default="single", description="only 'single': LangChain stores one vector per text")
    device: str | None = Field(default=None, description="where the model runs, e.g. 'cuda:0' (default: CPU)")
    dtype: str | None = Field(default=None, description="weights dtype, e.g. 'bfloat16' (default: the checkpoint's)")
    model_kwargs: dict[str, Any] = Field(default_factory=dict,
                                         description="more EmbedderConfig settings (pooling, max_tiles, ...)")
    embedder: EagleEmbedder | None = Field(default=None, exclude=True, repr=False,
                                           description="an EagleEmbedder already loaded (instead of model=)")
    dimensions: int | None = Field(default=None, description="Matryoshka truncation to this many features")
    truncate: str = Field(default="END", description="what to do with an over-long input: NONE, START or END")
    batch_size: int | None = Field(default=None, description="inputs per forward pass (default: the embedder's)")
    show_progress: bool = False

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True)

    @field_validator("mode")
    @classmethod
    def _single_only(cls, mode: str) -> str:
        if mode != "single":
            raise ValueError(f"mode={mode!r}: LangChain Embeddings hold one vector per text, so only mode='single' "
                             "works here; for multi-vector late interaction use nemo_eagle.embed.colpali")
        return mode

    @field_validator("truncate")
    @classmethod
    def _truncate(cls, truncate: str) -> str:
        return check_truncate(truncate)

    @model_validator(mode="after")
    def _load(self) -> EagleEmbeddings:
        if self.embedder is None:
            if self.model is None:
                raise ValueError("pass model=<checkpoint path or hub id> or embedder=<a loaded EagleEmbedder>")
            overrides = {**self.model_kwargs, "mode": self.mode}
            self.embedder = EagleEmbedder.from_pretrained(self.model, dtype=self.dtype, device=self.device, **overrides)
        else:
            if self.model is not None or self.model_kwargs or self.dtype is not None:
                raise ValueError("pass either model=... (with dtype/model_kwargs) or embedder=..., not both")
            if self.embedder.mode != "single":
                raise ValueError("LangChain Embeddings are single-vector; load the embedder with mode='single' "
                                 "(for late interaction use nemo_eagle.embed.colpali)")
            if self.device is not None:
                self.embedder.to(self.device)
        if self.dimensions is not None:
            scoring.truncate_dims(torch.zeros(1, self.embedder.dim), self.dimensions)  # a bad value fails here
        return self

    # ----------------------------------------------------------------------------------------- LangChain
    def embed_documents(self, texts: list[Any]) -> list[list[float]]:
        return self._embed(list(texts), "passage")

    def embed_query(self, text: str) -> list[float]:
        return self._embed([text], "query")[0]

    # The async methods are LangChain's defaults (the sync call in an executor thread).

    # ------------------------------------------------------------------------------------------ helpers
    def _embed(self, inputs: list[Any], input_type: str) -> list[list[float]]:
        if not inputs:
            return []
        blank = {i for i, x in enumerate(inputs) if isinstance(x, str) and not x.strip()}
        out: list[Any] = [None] * len(inputs)
        rest = [i for i in range(len(inputs)) if i not in blank]
        if rest:
            vecs = self.embedder.embed([inputs[i] for i in rest], input_type, truncate=self.truncate,
                                       dimensions=self.dimensions, batch_size=self.batch_size,
                                       show_progress=self.show_progress)
            for i, v in zip(rest, vecs.tolist()):
                out[i] = v
        cache: dict[str, list[float]] = {}
        for i in sorted(blank):
            if inputs[i] not in cache:
                cache[inputs[i]] = self._embed_blank(inputs[i], input_type)
            out[i] = list(cache[inputs[i]])
        return out

    def _embed_blank(self, text: str, input_type: str) -> list[float]:
        """A text without content: the embedder refuses it, LangChain callers expect a vector (its prefix's)."""
        emb = self.embedder
        item = emb.tokenize_one(EmbedInput(text=text), input_type, self.truncate)
        if not item.ids:
            raise ValueError(f"cannot embed the empty text {text!r}: the embedder's {input_type} prefix is empty too, "
                             "so there is not a single token to embed")
        with torch.inference_mode():
            vec, _ = emb(emb.collate([item]))
        return scoring.truncate_dims(vec, self.dimensions, normalize=emb.config.normalize)[0].cpu().tolist()
