"""colpali-engine's interface over a multi-vector ``EagleEmbedder``: ``ColEagleProcessor`` and ``ColEagleModel``.

The flow is colpali-engine's own (its README, its retrieval evaluators, its similarity maps)::

    model = ColEagleModel.from_pretrained(path, device="cuda").eval()
    processor = ColEagleProcessor.from_pretrained(path)
    batch_images = processor.process_images(images).to(model.device)
    batch_queries = processor.process_queries(queries).to(model.device)
    with torch.no_grad():
        image_embeddings, query_embeddings = model(**batch_images), model(**batch_queries)
    scores = processor.score(list(query_embeddings), list(image_embeddings))      # (N_q, N_images) MaxSim

Batches are transformers ``BatchFeature``s holding ``input_ids`` / ``attention_mask`` (right-padded), and for
images ``pixel_values`` (all tiles of the batch, ``(T, 3, S, S)``) with ``num_tiles`` (tiles per image, in order).
The model returns ``(B, L, D)`` unit vectors per token, zero at padding, as ColPali's models do.

Similarity maps: an EAGLE2 page is a grid of tiles (row-major) plus, when there are several, a thumbnail last; each
tile is a ``t x t`` grid of image tokens (row-major). ``get_n_patches`` gives the token grid of the tiles
``(cols * t, rows * t)``, ``get_local_image_mask`` the tile tokens (thumbnail left out) and
``get_similarity_maps_from_embeddings`` puts them in image order, as colpali-engine's Idefics3-style processors
do. For a one-tile page (no thumbnail) ``get_image_mask`` works with colpali-engine's generic
``interpretability.get_similarity_maps_from_embeddings`` too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import BatchFeature

from nemo_eagle.embed import scoring
from nemo_eagle.embed.embedder import EagleEmbedder, EmbedBatch, EmbedderConfig
from nemo_eagle.embed.inputs import image_blocks

# Keyword arguments colpali-engine's trainers pass to every model and the models drop (ColQwen2 does the same).
_IGNORED_FORWARD_KWARGS = ("return_dict", "output_hidden_states", "use_cache")


class ColEagleModel(nn.Module):
    """colpali-engine style model: ``model(input_ids=, attention_mask=, pixel_values=, num_tiles=)`` -> (B, L, D).

    A thin ``nn.Module`` over a multi-vector ``EagleEmbedder`` (its parameters are this module's); the forward
    pass is differentiable, so colpali-engine's contrastive losses can train it.
    """

    def __init__(self, embedder: EagleEmbedder):
        super().__init__()
        if not isinstance(embedder, EagleEmbedder) or embedder.mode != "multi":
            raise ValueError("ColEagleModel needs a multi-vector embedder (EagleEmbedder with mode='multi')")
        self.embedder = embedder

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, device_map: str | None = None,
                        torch_dtype: torch.dtype | str | None = None, **overrides: Any) -> ColEagleModel:
        """Load a checkpoint as a multi-vector model. ``device_map`` / ``torch_dtype`` are the transformers-style
        spellings colpali-engine's examples use (``device_map`` must name one device)."""
        if overrides.get("mode", "multi") != "multi":
            raise ValueError(f"ColEagleModel is multi-vector; got mode={overrides['mode']!r}")
        if device_map is not None:
            if device is not None or not isinstance(device_map, (str, torch.device)) or str(device_map) == "auto":
                raise ValueError(f"device_map={device_map!r}: pass one device (e.g. 'cuda:0'); the model is not "
                                 "sharded across devices")
            device = device_map
        if torch_dtype is not None:
            if dtype is not None:
                raise ValueError("pass dtype or torch_dtype, not both")
            dtype = torch_dtype
        overrides["mode"] = "multi"
        return cls(EagleEmbedder.from_pretrained(path, device=device, dtype=dtype, **overrides))

    # ------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.embedder.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embedder.model.dtype

    @property
    def dim(self) -> int:
        return self.embedder.dim

    @property
    def patch_size(self) -> int:
        """The vision tower's patch size (as ``ColQwen2.patch_size``)."""
        return self.embedder.model.config.vision.patch_size

    @property
    def spatial_merge_size(self) -> int:
        """Patches merged per side into one image token (the pixel shuffle; as ``ColQwen2.spatial_merge_size``)."""
        return self.embedder.model.config.projector.shuffle_factor

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor | None = None,
                num_tiles: Tensor | None = None, **kwargs: Any) -> Tensor:
        """Per-token multi-vectors (B, L, D), float32, unit length at real tokens and zero at padding."""
        unknown = sorted(set(kwargs) - set(_IGNORED_FORWARD_KWARGS))
        if unknown:
            raise TypeError(f"ColEagleModel.forward got unexpected argument(s) {unknown}; it takes input_ids, "
                            "attention_mask, pixel_values and num_tiles (from ColEagleProcessor)")
        if num_tiles is not None:
            have = 0 if pixel_values is None else int(pixel_values.shape[0])
            if int(num_tiles.sum()) != have:
                raise ValueError(
                    f"num_tiles says {int(num_tiles.sum())} tiles but pixel_values holds {have}: the batch "
                    "was split or reordered after ColEagleProcessor made it"
                )
        vectors, _ = self.embedder(EmbedBatch(input_ids, attention_mask, pixel_values))
        return vectors


class ColEagleProcessor:
    """colpali-engine style processor: images / queries / texts -> ``BatchFeature``s; MaxSim scoring.

    Its methods and their arguments are those of colpali-engine's ``BaseVisualRetrieverProcessor``.
    """

    def __init__(self, embedder: EagleEmbedder | ColEagleModel, *, truncate: str = "END"):
        if isinstance(embedder, ColEagleModel):
            embedder = embedder.embedder
        if not isinstance(embedder, EagleEmbedder) or embedder.mode != "multi":
            raise ValueError("ColEagleProcessor needs a multi-vector embedder (EagleEmbedder with mode='multi') "
                             "or a ColEagleModel")
        self.embedder = embedder
        self.truncate = truncate
        self._raw: EagleEmbedder | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, truncate: str = "END", **overrides: Any) -> ColEagleProcessor:
        """The processor of a checkpoint (tokenizer, tiling, prefixes) without loading its weights."""
        from nemo_eagle.checkpoint import open_checkpoint
        from nemo_eagle.data.processor import EagleProcessor

        if overrides.get("mode", "multi") != "multi":
            raise ValueError(f"ColEagleProcessor is multi-vector; got mode={overrides['mode']!r}")
        ckpt = open_checkpoint(path)
        config = EmbedderConfig.from_dict({**ckpt.embedder_config(),
                                           **{k: v for k, v in overrides.items() if v is not None}, "mode": "multi"})
        processor = EagleProcessor.from_contract(ckpt.contract_dir, ckpt.config, padding_side="right")
        return cls(EagleEmbedder(_Weightless(ckpt.config), processor, config), truncate=truncate)

    # ------------------------------------------------------------------------------------- attributes
    @property
    def tokenizer(self) -> Any:
        return self.embedder.processor.tokenizer

    @property
    def query_prefix(self) -> str:
        """Put before every query by ``process_queries`` (the embedder's ``query_prefix``)."""
        return self.embedder.config.query_prefix

    @property
    def passage_prefix(self) -> str:
        """Put before every image or text passage by ``process_images`` / ``process_texts(input_type='passage')``."""
        return self.embedder.config.passage_prefix

    @property
    def query_augmentation_token(self) -> str:
        """The padding token, as ColQwen2 uses ``<|endoftext|>``; appended only when asked (see process_queries)."""
        tok = self.tokenizer
        return tok.backend.id_to_token(tok.pad_token_id)

    @property
    def image_token(self) -> str:
        return self.tokenizer.backend.id_to_token(self.image_token_id)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.image_token_id

    @property
    def image_seq_len(self) -> int:
        """Image tokens per tile."""
        return self.embedder.processor.tokens_per_tile

    # ---------------------------------------------------------------------------------------- batches
    def process_images(self, images: Sequence[Any]) -> BatchFeature:
        """Page images (or ``(image, text)`` pairs) -> a batch for ``ColEagleModel``, as passages."""
        return self._batch(self.embedder.prepare(list(images), "passage", self.truncate))

    def process_texts(self, texts: Sequence[str], input_type: str | None = None) -> BatchFeature:
        """Texts -> a batch.

        By default the texts are used as given, which is colpali-engine's contract (its ``process_queries`` is
        ``process_texts([query_prefix + text + suffix, ...])``). ``input_type='passage'`` (text documents) or
        ``'query'`` puts that prefix first, as ``EagleEmbedder.embed`` does.
        """
        if input_type is None:
            return self._batch(self._as_given.prepare(list(texts), "passage", self.truncate))
        return self._batch(self.embedder.prepare(list(texts), input_type, self.truncate))

    @property
    def _as_given(self) -> EagleEmbedder:
        """A tokenising view of the embedder with empty prefixes (it shares the processor; no weights)."""
        if self._raw is None:
            cfg = replace(self.embedder.config, mode="single", query_prefix="", passage_prefix="")
            self._raw = EagleEmbedder(_Weightless(self.embedder.model.config), self.embedder.processor, cfg)
        return self._raw

    def process_queries(self, texts: Sequence[str] | None = None, queries: Sequence[str] | None = None,
                        max_length: int = 50, contexts: Sequence[str] | None = None,
                        suffix: str | None = None) -> BatchFeature:
        """Queries -> a batch, with ``query_prefix`` before each.

        As colpali-engine's: ``texts`` or (older name) ``queries``; ``max_length`` is deprecated there and unused
        (over-long inputs follow the processor's ``truncate``). Unlike ColPali's models, EAGLE2 embedders are
        trained without query augmentation, so the default ``suffix`` is empty; pass
        ``suffix=processor.query_augmentation_token * 10`` for ColBERT-style augmentation.
        """
        if texts is not None and queries is not None:
            raise ValueError("Only one of 'texts' or 'queries' should be provided.")
        texts = queries if queries is not None else texts
        if texts is None:
            raise ValueError("No texts or queries provided.")
        if contexts is not None:
            raise ValueError("contexts is not supported: put any context into the query text")
        suffix = suffix or ""
        return self._batch(self.embedder.prepare([t + suffix for t in texts], "query", self.truncate))

    def _batch(self, batch: EmbedBatch) -> BatchFeature:
        data: dict[str, Tensor] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.pixel_values is not None:
            tok, tpt = self.tokenizer, self.image_seq_len
            tiles = [(e - s - 1) // tpt for row, n in zip(batch.input_ids.tolist(), batch.num_tokens)
                     for s, e in image_blocks(row[:n], tok.img_start_id, tok.img_end_id)]
            data["pixel_values"] = batch.pixel_values
            data["num_tiles"] = torch.tensor(tiles, dtype=torch.long)
        return BatchFeature(data=data)

    # ---------------------------------------------------------------------------------------- scoring
    def score(self, qs: Tensor | Sequence[Tensor], ps: Tensor | Sequence[Tensor],
              device: str | torch.device | None = None, **kwargs: Any) -> Tensor:
        """MaxSim scores (N_q, N_p) on CPU; ``kwargs`` go to ``score_multi_vector`` (``batch_size``)."""
        return self.score_multi_vector(qs, ps, device=device, **kwargs)

    @staticmethod
    def score_multi_vector(qs: Tensor | Sequence[Tensor], ps: Tensor | Sequence[Tensor], batch_size: int = 128,
                           device: str | torch.device | None = None) -> Tensor:
        """(N_q, N_p) ColBERT MaxSim scores, float32 on CPU.

        ``qs`` / ``ps`` are lists of (T_i, D) tensors or padded (N, T, D) tensors as ``ColEagleModel`` returns
        them. All-zero rows are padding (a real vector has unit length): they add nothing on the query side and
        never win the max on the passage side (colpali-engine lets a zero pad row win with score 0 when every real
        token of a passage scores below 0).
        """
        if len(qs) == 0:
            raise ValueError("No queries provided")
        if len(ps) == 0:
            raise ValueError("No passages provided")
        q, qm = _padded(qs)
        p, pm = _padded(ps)
        if device is not None:
            q, qm, p, pm = q.to(device), qm.to(device), p.to(device), pm.to(device)
        rows = [scoring.maxsim(q[i:i + batch_size], qm[i:i + batch_size], p, pm, doc_chunk=batch_size)
                for i in range(0, q.shape[0], batch_size)]
        return torch.cat(rows).float().cpu()

    # --------------------------------------------------------------------------- interpretability
    def get_n_patches(self, image_size: tuple[int, int], patch_size: int | None = None,
                      spatial_merge_size: int | None = None) -> tuple[int, int]:
        """Image-token grid ``(n_patches_x, n_patches_y)`` of the tiles an image of ``image_size = (width, height)``
        (PIL's ``image.size``) is cut into.

        The grid follows from the checkpoint's tiling alone; ``patch_size`` / ``spatial_merge_size`` (what other
        ColVision processors need, from ``model.patch_size`` / ``model.spatial_merge_size``) are checked against
        it when given.
        """
        cfg = self.embedder.model.config
        for name, given, want in (("patch_size", patch_size, cfg.vision.patch_size),
                                  ("spatial_merge_size", spatial_merge_size, cfg.projector.shuffle_factor)):
            if given is not None and given != want:
                raise ValueError(f"{name}={given} does not match this checkpoint ({name} {want})")
        width, height = (int(v) for v in image_size)
        # plan() reads only the image's shape: the one tiling rule decides the grid, as for real pixels.
        plan = self.embedder.processor.plan(torch.empty(0, height, width), max_tiles=self.embedder.config.max_tiles)
        side = math.isqrt(self.image_seq_len)
        cols, rows = plan.grid
        return cols * side, rows * side

    def get_image_mask(self, batch_images: BatchFeature) -> Tensor:
        """(B, L) bool: every image token (tiles and thumbnail)."""
        return batch_images["input_ids"] == self.image_token_id

    def get_local_image_mask(self, batch_images: BatchFeature) -> Tensor:
        """(B, L) bool: the image tokens of the tiles, without each image's thumbnail (the last tile, when an
        image has more than one)."""
        mask = self.get_image_mask(batch_images)
        local = mask.clone()
        tok, tpt = self.tokenizer, self.image_seq_len
        for b, row in enumerate(batch_images["input_ids"].tolist()):
            for s, e in image_blocks(row, tok.img_start_id, tok.img_end_id):
                if (e - s - 1) // tpt > 1:  # several tiles: the thumbnail is the last one
                    local[b, e - tpt:e] = False
        return local

    def rearrange_image_embeddings(self, image_embeddings: Tensor, image_mask: Tensor,
                                   n_patches: tuple[int, int]) -> Tensor:
        """One page's tile tokens (tile after tile, each row-major) -> (n_patches_x, n_patches_y, D) in image order."""
        tokens = image_embeddings[image_mask]
        n_x, n_y = n_patches
        side = math.isqrt(self.image_seq_len)
        cols, rows = n_x // side, n_y // side
        if tokens.shape[0] != n_x * n_y or cols * side != n_x or rows * side != n_y:
            raise ValueError(f"{tokens.shape[0]} image tokens do not form a {n_x} x {n_y} grid of {side} x {side} "
                             "tiles; use get_local_image_mask() (the thumbnail is not part of the grid)")
        grid = tokens.reshape(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4)  # (rows, y in tile, cols, x in tile)
        return grid.reshape(n_y, n_x, -1).transpose(0, 1)  # (x, y, D)

    def get_similarity_maps_from_embeddings(self, image_embeddings: Tensor, query_embeddings: Tensor,
                                            n_patches: tuple[int, int] | list[tuple[int, int]],
                                            image_mask: Tensor) -> list[Tensor]:
        """Per page a (query_tokens, n_patches_x, n_patches_y) map of query-token / image-token similarities."""
        if isinstance(n_patches, tuple):
            n_patches = [n_patches] * image_embeddings.shape[0]
        return [torch.einsum("qd,xyd->qxy", query_embeddings[i],
                             self.rearrange_image_embeddings(image_embeddings[i], image_mask[i], n_patches[i]))
                for i in range(image_embeddings.shape[0])]


class _Weightless:
    """Stands in for the model where only its config is needed (a processor: tokenising and tiling)."""

    def __init__(self, config: Any):
        self.config = config


def _padded(x: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    if isinstance(x, Tensor):
        if x.dim() != 3:
            raise ValueError(f"expected padded multi-vectors (N, T, D), got shape {tuple(x.shape)}")
        return x.float(), x.abs().sum(-1) > 0
    return scoring.pad_multi([v.float()[v.abs().sum(-1) > 0] for v in x])
