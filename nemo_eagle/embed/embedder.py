"""EagleEmbedder: EAGLE2 as an image+text embedding model, over the same ``EagleModel`` weights.

Single-vector (mean or last-token pooling, L2-normalised, Matryoshka ``dimensions``) as in
llama-nemotron-embed-vl, or multi-vector late interaction (a linear projection of every token, ColBERT MaxSim)
as in llama-nemoretriever-colembed, optionally with bidirectional attention. Inputs go through the checkpoint's
``EagleProcessor``, so the embedder tiles images exactly as training and serving do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nemo_eagle.data.padding import pad_rows
from nemo_eagle.embed import scoring
from nemo_eagle.embed.inputs import (
    EmbedInput,
    InputTooLongError,
    check_input_type,
    check_truncate,
    image_blocks,
    parse_input,
    truncate_ids,
)
from nemo_eagle.modeling.lm_io import positions_from_mask

log = logging.getLogger(__name__)

CONFIG_FILE = "embedder_config.json"
HEAD_FILE = "embedder_head.safetensors"
MODES = ("single", "multi")
POOLINGS = ("mean", "last")
PROJECTION_SEED = 0  # an untrained projection is this seed's orthogonal matrix, the same in every process


@dataclass(kw_only=True)
class EmbedderConfig:
    """How vectors are made from the model; stored next to the weights as ``embedder_config.json``."""

    mode: str = "single"  # single: one vector per input; multi: one vector per token (late interaction)
    pooling: str = "mean"  # single mode: mean over real tokens, or the last real token
    bidirectional: bool = False  # every real token sees every other (ColEmbed); False keeps the causal LM mask
    normalize: bool = True
    projection_dim: int = 128  # multi mode: width of the per-token linear projection
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    max_length: int | None = None  # tokens per input; None: the LLM's max_position_embeddings
    max_tiles: int | None = None  # per-image tile limit; None: the checkpoint's tiling contract
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("projection_dim", "batch_size", "max_length", "max_tiles"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown embedder setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class EmbedBatch:
    """Collated inputs: input_ids (B, L), attention_mask (B, L), pixel_values (T, 3, S, S) or None."""

    input_ids: Tensor
    attention_mask: Tensor
    pixel_values: Tensor | None
    num_tokens: list[int] = field(default_factory=list)  # real tokens per input (for API usage counts)
    truncated: list[bool] = field(default_factory=list)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> EmbedBatch:
        pv = self.pixel_values
        if pv is not None:
            pv = pv.to(device=device, dtype=dtype or pv.dtype)
        return replace(self, input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                       pixel_values=pv)


@dataclass
class _Item:
    ids: list[int]
    pixel_values: Tensor | None
    truncated: bool = False


def bidirectional_bias(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) padding mask -> (B, 1, L, L) additive bias where every position sees every real token.

    NOTE: an additive float bias (0 visible, dtype-min hidden) means the same to transformers' eager and SDPA
    attention; passing any 4-D mask also turns off the ``is_causal`` shortcut of SDPA.
    """
    visible = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): key j is a real token
    bias = torch.zeros(attention_mask.shape[0], 1, attention_mask.shape[1], attention_mask.shape[1], dtype=dtype,
                       device=attention_mask.device)
    return bias.masked_fill(~visible, torch.finfo(dtype).min)


class EagleEmbedder(nn.Module):
    """Embeds text, images and image+text with an EAGLE2 checkpoint.

    Example:
        >>> emb = EagleEmbedder.from_pretrained(path, mode="single")
        >>> q = emb.embed_queries(["what is the revenue in 2023?"])     # (N, D)
        >>> d = emb.embed_documents([pil_image, "some text", (pil_image, "caption")])
        >>> emb.score(q, d)                                             # (N_q, N_d)
    """

    def __init__(self, model: nn.Module, processor: Any = None, config: EmbedderConfig | None = None, **overrides: Any):
        """Wrap a loaded ``EagleModel``; ``processor`` defaults to the one of the checkpoint it came from."""
        super().__init__()
        config = replace(config or EmbedderConfig(), **overrides)
        if processor is None:
            if getattr(model, "source_dir", None) is None:
                raise ValueError("pass processor=EagleProcessor.from_pretrained(...): the model was not loaded from "
                                 "a checkpoint directory, so its tokenizer and tiling are unknown")
            from nemo_eagle.data.processor import EagleProcessor

            processor = EagleProcessor.from_pretrained(model.source_dir, config=model.config, padding_side="right")
        self.model = model
        self.processor = processor
        self.config = config
        hidden = model.config.llm.hidden_size
        self.projection: nn.Linear | None = None
        if config.mode == "multi":
            self.projection = nn.Linear(hidden, config.projection_dim, bias=False)
            gen = torch.Generator().manual_seed(PROJECTION_SEED)
            with torch.no_grad():
                nn.init.orthogonal_(self.projection.weight, generator=gen)
        tok = processor.tokenizer
        self._prefix_ids = {t: tok.encode(self.prefix(t).rstrip()) for t in ("query", "passage")}

    # --------------------------------------------------------------------------------------------- io
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype | str | None = None,
                        device: str | torch.device | None = None, attn_implementation: str = "sdpa",
                        **overrides: Any) -> EagleEmbedder:
        """Load an EAGLE2 checkpoint (plus ``embedder_config.json`` / the projection head when saved with it).

        Keyword overrides are ``EmbedderConfig`` fields (``mode``, ``pooling``, ``bidirectional``, ...).
        """
        from nemo_eagle.checkpoint import open_checkpoint
        from nemo_eagle.data.processor import EagleProcessor
        from nemo_eagle.modeling.eagle import EagleModel

        ckpt = open_checkpoint(path)
        path = ckpt.path
        model = EagleModel.from_pretrained(path, dtype=dtype, device=device, attn_implementation=attn_implementation)
        processor = EagleProcessor.from_contract(ckpt.contract_dir, model.config, padding_side="right")
        saved = ckpt.embedder_config()
        config = EmbedderConfig.from_dict({**saved, **{k: v for k, v in overrides.items() if v is not None}})
        emb = cls(model, processor, config)
        head = ckpt.contract_dir / HEAD_FILE
        if emb.projection is not None:
            if head.exists():
                from safetensors.torch import load_file

                weight = load_file(str(head))["projection.weight"]
                if tuple(weight.shape) != tuple(emb.projection.weight.shape):
                    raise ValueError(f"{head} holds a {tuple(weight.shape)} projection but projection_dim="
                                     f"{config.projection_dim} asks for {tuple(emb.projection.weight.shape)}")
                emb.projection.weight.data.copy_(weight)
            else:
                log.warning("no trained multi-vector projection in %s: using the fixed seed-%d orthogonal one "
                            "(fine-tune one with `nemo-eagle train-embedder`)", path, PROJECTION_SEED)
        if device is not None:
            emb.to(device)
        emb.eval()
        log.info("embedder: %s", json.dumps(asdict(config)))
        return emb

    def save_pretrained(self, out: str | Path) -> Path:
        """The model in the official HF layout plus ``embedder_config.json`` and the projection head."""
        out = Path(self.model.save_pretrained(out))
        (out / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        if self.projection is not None:
            from safetensors.torch import save_file

            save_file({"projection.weight": self.projection.weight.detach().cpu().contiguous()}, str(out / HEAD_FILE))
        return out

    # ------------------------------------------------------------------------------------- properties
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def dim(self) -> int:
        """Width of the vectors (before any ``dimensions`` truncation)."""
        return self.config.projection_dim if self.projection is not None else self.model.config.llm.hidden_size

    @property
    def max_length(self) -> int:
        return self.config.max_length or int(self.model.config.llm.max_position_embeddings)

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.config = replace(self.config, max_length=value)

    def prefix(self, input_type: str) -> str:
        return self.config.query_prefix if check_input_type(input_type) == "query" else self.config.passage_prefix

    # ------------------------------------------------------------------------------------- tokenising
    def _placeholder(self, k: int) -> str:
        return "<image>" if self.processor.uses_legacy_placeholder else f"<image-{k}>"

    def _encode(
        self, inp: EmbedInput, input_type: str, max_image_tokens: int | None
    ) -> tuple[list[int], Tensor, list[int]]:
        text = self.processor.tokenizer.protect(inp.text)  # typed text: special-token strings stay plain text
        prompt = self.prefix(input_type) + "".join(self._placeholder(k + 1) for k in range(len(inp.images))) + text
        batch = self.processor(text=prompt, images=inp.images or None, max_tiles=self.config.max_tiles,
                               max_image_tokens=max_image_tokens)
        return batch["input_ids"][0].tolist(), batch["pixel_values"], [p.num_tiles for p in batch.plans]

    def tokenize_one(self, inp: EmbedInput, input_type: str, truncate: str = "NONE", index: int = 0) -> _Item:
        """Token ids and tiles of one parsed input, fitted to ``max_length`` as ``truncate`` says."""
        limit = self.max_length
        ids, pixels, tiles = self._encode(inp, input_type, None)
        if len(ids) <= limit:
            return _Item(ids, pixels if tiles else None)
        if truncate == "NONE":
            raise InputTooLongError(f"input {index} has {len(ids)} tokens, more than max_length={limit}; shorten it, "
                                    "use fewer image tiles, or pass truncate='END' or 'START'")
        tpt = self.processor.tokens_per_tile
        if tiles:  # first try fewer tiles, so an image shrinks rather than disappears
            budget = limit - (len(ids) - sum(tiles) * tpt)
            if budget >= tpt * len(tiles):
                ids, pixels, tiles = self._encode(inp, input_type, budget)
                log.info("input %d: tiles reduced to %s to fit max_length=%d", index, tiles, limit)
                if len(ids) <= limit:
                    return _Item(ids, pixels, truncated=True)
        tok = self.processor.tokenizer
        prefix = self._prefix_ids[input_type]
        protected = len(prefix) if ids[:len(prefix)] == prefix else 0
        blocks = image_blocks(ids, tok.img_start_id, tok.img_end_id)
        kept_ids, kept = truncate_ids(ids, limit, truncate, protected=protected, blocks=blocks)
        if len(kept) < len(blocks):
            log.info("input %d: %d of %d image(s) dropped by truncate=%s (max_length=%d)", index,
                     len(blocks) - len(kept), len(blocks), truncate, limit)
        starts = [sum(tiles[:i]) for i in range(len(tiles))]
        parts = [pixels[starts[i]:starts[i] + tiles[i]] for i in kept]
        return _Item(kept_ids, torch.cat(parts) if parts else None, truncated=True)

    def collate(self, items: Sequence[_Item]) -> EmbedBatch:
        """Right-pad a list of tokenised inputs into one batch."""
        input_ids, mask = pad_rows([it.ids for it in items], self.processor.tokenizer.pad_token_id, side="right")
        pixels = [it.pixel_values for it in items if it.pixel_values is not None]
        return EmbedBatch(input_ids, mask, torch.cat(pixels) if pixels else None, [len(it.ids) for it in items],
                          [it.truncated for it in items])

    def prepare(self, inputs: Sequence[Any], input_type: str = "passage", truncate: str = "NONE") -> EmbedBatch:
        """Parse, tokenise, truncate and collate ``inputs`` (one batch)."""
        input_type, truncate = check_input_type(input_type), check_truncate(truncate)
        return self.collate(
            [self.tokenize_one(parse_input(x, i), input_type, truncate, i) for i, x in enumerate(inputs)]
        )

    # ---------------------------------------------------------------------------------------- forward
    def hidden_states(self, batch: EmbedBatch) -> Tensor:
        """Final decoder hidden states (B, L, H): the LM without its head, causal or bidirectional."""
        batch = batch.to(self.model.device, self.model.dtype)
        embeds = self.model.embed_inputs(batch.input_ids, batch.pixel_values)
        mask = batch.attention_mask
        attn = bidirectional_bias(mask, embeds.dtype) if self.config.bidirectional else mask
        out = self.model.language_model.model(inputs_embeds=embeds, attention_mask=attn,
                                              position_ids=positions_from_mask(mask), use_cache=False)
        return out.last_hidden_state

    def forward(self, batch: EmbedBatch) -> tuple[Tensor, Tensor | None]:
        """Differentiable embeddings of a collated batch.

        Returns:
            single mode: ((B, D) vectors, None); multi mode: ((B, L, D) per-token vectors, (B, L) bool mask),
            with padded positions zero. Vectors are float32 and unit length when ``normalize`` is set.
        """
        hidden = self.hidden_states(batch).float()
        mask = batch.attention_mask.to(hidden.device).bool()
        if self.projection is not None:
            vecs = self.projection(hidden)
            if self.config.normalize:
                vecs = scoring.l2_normalize(vecs)
            return vecs * mask[..., None], mask
        if self.config.pooling == "mean":
            w = mask[..., None].to(hidden.dtype)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)
        else:
            last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # last real position
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return (scoring.l2_normalize(pooled) if self.config.normalize else pooled), None

    # ------------------------------------------------------------------------------------- public API
    def embed_with_usage(self, inputs: Sequence[Any], input_type: str = "passage", *, truncate: str = "NONE",
                         dimensions: int | None = None, batch_size: int | None = None,
                         show_progress: bool = False) -> tuple[Tensor | list[Tensor], list[int]]:
        """Like ``embed`` and also the number of tokens each input used (for the API's ``usage``)."""
        if isinstance(inputs, (str, dict)) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if not inputs:
            raise ValueError("no inputs to embed")
        input_type, truncate = check_input_type(input_type), check_truncate(truncate)
        parsed = [parse_input(x, i) for i, x in enumerate(inputs)]
        if input_type == "query" and any(p.has_images for p in parsed):
            bad = [i for i, p in enumerate(parsed) if p.has_images]
            raise ValueError(f"input(s) {bad} hold images, which are only accepted with input_type='passage'")
        if dimensions is not None:
            scoring.truncate_dims(torch.zeros(1, self.dim), dimensions)  # validate before any work
        items = [self.tokenize_one(p, input_type, truncate, i) for i, p in enumerate(parsed)]
        # Batch inputs of similar length together; results go back in input order.
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        size = batch_size or self.config.batch_size
        out: list[Any] = [None] * len(items)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc=f"embed {input_type}s", unit="input")
        with torch.inference_mode():
            for start in range(0, len(order), size):
                idx = order[start:start + size]
                vecs, mask = self(self.collate([items[i] for i in idx]))
                vecs = scoring.truncate_dims(vecs, dimensions, normalize=self.config.normalize)
                for row, i in enumerate(idx):
                    out[i] = vecs[row] if mask is None else vecs[row][mask[row]]
                if bar is not None:
                    bar.update(len(idx))
        if bar is not None:
            bar.close()
        counts = [len(it.ids) for it in items]
        result = torch.stack(out).cpu() if self.projection is None else [v.cpu() for v in out]
        return result, counts

    def embed(self, inputs: Sequence[Any], input_type: str = "passage", *, truncate: str = "NONE",
              dimensions: int | None = None, batch_size: int | None = None,
              show_progress: bool = False) -> Tensor | list[Tensor]:
        """Embed inputs as queries or passages.

        Args:
            inputs: texts, images, ``(image, text)`` pairs or dicts (see ``inputs.parse_input``).
            input_type: ``"query"`` or ``"passage"`` (adds that prefix; images only with passages).
            truncate: ``"NONE"`` (raise when longer than ``max_length``), ``"END"`` or ``"START"``.
            dimensions: keep the first ``dimensions`` features and renormalise (Matryoshka).

        Returns:
            single mode: (N, D) float32; multi mode: a list of N (T_i, D) float32 tensors.
        """
        return self.embed_with_usage(inputs, input_type, truncate=truncate, dimensions=dimensions,
                                     batch_size=batch_size, show_progress=show_progress)[0]

    def embed_queries(self, queries: Sequence[Any], **kwargs: Any) -> Tensor | list[Tensor]:
        return self.embed(queries, "query", **kwargs)

    def embed_documents(self, documents: Sequence[Any], **kwargs: Any) -> Tensor | list[Tensor]:
        return self.embed(documents, "passage", **kwargs)

    @staticmethod
    def score(queries: Tensor | Sequence[Tensor], documents: Tensor | Sequence[Tensor]) -> Tensor:
        """(N_q, N_d) relevance: cosine for single vectors, MaxSim for multi-vectors."""
        return scoring.score(queries, documents)

    def rank(self, query: Any, passages: Sequence[Any], *, truncate: str = "NONE",
             top_n: int | None = None) -> list[dict[str, float | int]]:
        """Rerank ``passages`` for ``query``: ``[{"index", "logit"}, ...]`` sorted by logit, best first.

        ``query`` and each passage may be a string or a ``{"text": ...}`` dict (the /v1/ranking shape).
        """
        if not passages:
            raise ValueError("no passages to rank")
        q = self.embed([query], "query", truncate=truncate)
        d = self.embed(list(passages), "passage", truncate=truncate)
        logits = self.score(q, d)[0]
        order = torch.argsort(logits, descending=True, stable=True).tolist()
        return [{"index": i, "logit": float(logits[i])} for i in order[:top_n]]
