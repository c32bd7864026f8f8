"""The model side of the engine: images -> features (through the vision cache), prompt embeddings, a prompt
chunk prefilled into a cache slot, and one decode step over every running sequence, each returning logits at
the sampled positions only. No scheduling here (``scheduler.py`` decides what runs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from nemo_eagle.modeling.generation import last_logits_kwargs
from nemo_eagle.modeling.lm_io import cache_kwargs
from nemo_eagle.serve.engine.kv_cache import CacheShape, SlotKVCache
from nemo_eagle.serve.engine.vision_cache import VisionCache

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class OutputHead:
    """The LM's output projection, last hidden states -> logits, for a batch of rows.

    On a CPU with float32 weights it also keeps the weight transposed, (H, V) contiguous: for four rows or more,
    the BLAS GEMM behind ``F.linear`` reads the (V, H) weight through a transposed view much slower than it reads
    a contiguous (H, V) matrix (``benchmarks/serve_load.py`` prints both; 16 rows of Eagle2-1B's 151k x 896
    head on two cores: about 64 -> 37 ms), with the same arithmetic per output. Fewer rows go through the model's own
    head (matrix-vector kernels, fast either way), and so does every other device and dtype (bfloat16 kernels and
    GPUs handle the layout themselves). The price is one more copy of the head's weight, logged at start-up."""

    MIN_ROWS = 4

    def __init__(self, lm: Any):
        self.module = lm.get_output_embeddings()
        self.transposed: Tensor | None = None
        self.bias = getattr(self.module, "bias", None)
        weight = self.module.weight if isinstance(self.module, torch.nn.Linear) else None  # a plain projection only
        if weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32:
            self.transposed = weight.detach().t().contiguous()

    @property
    def extra_bytes(self) -> int:
        return 0 if self.transposed is None else self.transposed.numel() * self.transposed.element_size()

    @torch.inference_mode()
    def __call__(self, hidden: Tensor) -> Tensor:
        """(B, H) -> (B, V)."""
        if self.transposed is None or hidden.shape[0] < self.MIN_ROWS:
            return self.module(hidden)
        if self.bias is None:
            return torch.mm(hidden, self.transposed)
        return torch.addmm(self.bias, hidden, self.transposed)


class ModelRunner:
    """``graphs``: decode through fixed-size batch buckets (``StaticDecodeView``), each captured once as a CUDA
    graph on a GPU and replayed (no per-step launch overhead). On CPU ``graphs=True`` runs the same fixed-shape
    step eagerly, which is what the CPU tests check against the dynamic step."""

    def __init__(self, model: Any, cache: SlotKVCache, vision_cache: VisionCache | None = None, *,
                 graphs: bool = False):
        self.model, self.cache, self.vision_cache = model, cache, vision_cache
        self.lm = model.language_model
        self.device, self.dtype = model.device, model.dtype
        self.bool_mask = getattr(self.lm.config, "_attn_implementation", "sdpa") != "eager"
        self.logits_kw = last_logits_kwargs(self.lm)
        self.head = OutputHead(self.lm)
        self._cache_kwargs = lambda view: cache_kwargs(self.lm, view)
        self.vision_seconds = 0.0  # time spent in the vision tower (misses only)
        if graphs and cache.scratch is None:
            raise ValueError("fixed-size decode needs a cache built with a scratch slot (SlotKVCache(scratch=True))")
        self.graphs = graphs
        self.buckets = [b for b in BUCKETS if b < cache.slots] + [cache.slots]
        self._static: dict[int, _StaticStep] = {}

    @classmethod
    def build(cls, model: Any, *, max_len: int, memory_bytes: int | None, max_num_seqs: int | None,
              vision_cache_bytes: int = 0, graphs: bool | None = None) -> ModelRunner:
        """``graphs=None``: CUDA-graph decode on a GPU, the dynamic step on CPU."""
        from nemo_eagle.serve.engine.kv_cache import slots_for_budget

        graphs = model.device.type == "cuda" if graphs is None else graphs
        shape = CacheShape.of(model.language_model.config, max_len, model.dtype)
        slots = slots_for_budget(shape, memory_bytes=memory_bytes, max_num_seqs=max_num_seqs)
        cache = SlotKVCache(shape, slots, model.device, scratch=graphs)
        return cls(model, cache, VisionCache(vision_cache_bytes) if vision_cache_bytes > 0 else None, graphs=graphs)

    # ------------------------------------------------------------------------------------------ inputs
    @torch.inference_mode()
    def image_features(self, pixels: Sequence[Tensor], keys: Sequence[tuple | None]) -> Tensor | None:
        """Per-image tiles (T_i, 3, S, S) -> their projected tokens, concatenated (sum T_i * tokens, H).
        Images found in the vision cache skip the tower; the misses are encoded together."""
        if not pixels:
            return None
        found: list[Tensor | None] = [self.vision_cache.get(k) if self.vision_cache is not None and k is not None
                                      else None for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            t0 = time.perf_counter()
            batch = torch.cat([pixels[i] for i in missing]).to(self.device, self.dtype)
            feats = self.model.get_image_features(batch)  # (tiles, tokens, H)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            spent = time.perf_counter() - t0
            self.vision_seconds += spent
            total_tiles = sum(int(pixels[i].shape[0]) for i in missing)
            at = 0
            for i in missing:
                n = int(pixels[i].shape[0])
                found[i] = feats[at:at + n]
                at += n
                if self.vision_cache is not None and keys[i] is not None:
                    self.vision_cache.put(keys[i], found[i], spent * n / total_tiles)
        return torch.cat([f.reshape(-1, f.shape[-1]) for f in found])

    @torch.inference_mode()
    def embed(self, input_ids: Tensor, features: Tensor | None) -> Tensor:
        """(1, L) ids + image features -> (1, L, H) embeddings (``EagleModel``'s merge)."""
        ids = input_ids.to(self.device)
        embeds = self.lm.get_input_embeddings()(ids)
        if features is None:
            return embeds
        return self.model.merge_impl(embeds, ids, features, self.model.image_token_id)

    # ------------------------------------------------------------------------------------------- steps
    def _mask(self, allowed: Tensor) -> Tensor:
        """(B, 1, Q, K) bool 'may attend' -> what this attention implementation takes."""
        if self.bool_mask:
            return allowed
        return torch.zeros(allowed.shape, dtype=self.dtype, device=self.device).masked_fill(
            ~allowed, torch.finfo(self.dtype).min)

    @torch.inference_mode()
    def prefill(self, slot: int, embeds: Tensor, start: int) -> Tensor:
        """Write a prompt chunk (1, n, H) at positions start.. of ``slot``; the hidden state of its last position
        (H,). No logits: ``logits`` turns the last states of every prompt finished in a step into logits at once
        (the LM head, 151k x 896 on Eagle2-1B, costs a decode step's worth of memory traffic per call)."""
        n = embeds.shape[1]
        pos = torch.arange(start, start + n, device=self.device)
        keys = torch.arange(start + n, device=self.device)
        allowed = (keys[None, :] <= pos[:, None])[None, None]  # (1, 1, n, start + n) causal with an offset
        out = self.lm.get_decoder()(inputs_embeds=embeds.to(self.device), attention_mask=self._mask(allowed),
                                    position_ids=pos[None], use_cache=True,
                                    **self._cache_kwargs(self.cache.prefill_view(slot, start)))
        return out.last_hidden_state[0, -1]

    @torch.inference_mode()
    def logits(self, hidden: Tensor) -> Tensor:
        """(B, H) last hidden states -> (B, V) logits (the LM's head, ``OutputHead``)."""
        return self.head(hidden)

    @torch.inference_mode()
    def prepare_graphs(self) -> None:
        """Build (and on a GPU capture) the fixed-size step of every bucket now, before serving: a capture must
        not overlap other threads' work on the device (the vision tower runs in preprocessing workers)."""
        for b in self.buckets:
            if b not in self._static:
                self._static[b] = _StaticStep(self, b)

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: Tensor, lengths: Tensor, extra: Tensor | None = None) -> Tensor:
        """One token per sequence: row i is ``tokens[i]`` at position ``lengths[i]`` of ``slots[i]``. (B, V).
        ``extra`` (E, H): last hidden states of prompts finished this step, whose logits follow the B rows in the
        same head call ((B + E, V)): one pass over the head's weight for both."""
        if not slots:
            return self.logits(extra)
        if self.graphs:
            bucket = next(b for b in self.buckets if b >= len(slots))
            if bucket not in self._static:
                self._static[bucket] = _StaticStep(self, bucket)
            logits = self._static[bucket].run(slots, tokens, lengths)
            return logits if extra is None else torch.cat([logits, self.logits(extra)])
        tokens, lengths = tokens.to(self.device), lengths.to(self.device)
        view = self.cache.decode_view(slots, lengths)
        keys = torch.arange(view.kv_len, device=self.device)
        allowed = (keys[None, :] <= lengths[:, None])[:, None, None, :]  # (B, 1, 1, kv_len)
        embeds = self.lm.get_input_embeddings()(tokens[:, None])
        out = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=self._mask(allowed),
                                    position_ids=lengths[:, None], use_cache=True, **self._cache_kwargs(view))
        hidden = out.last_hidden_state[:, -1]
        return self.logits(hidden if extra is None else torch.cat([hidden, extra.to(hidden.dtype)]))


class _StaticStep:
    """The decode step for one batch-size bucket: persistent input buffers, the rows beyond the live ones padded
    onto the scratch slot, attention over the full ``max_len``; captured as a CUDA graph on a GPU."""

    def __init__(self, runner: ModelRunner, size: int):
        self.runner, self.size = runner, size
        dev, cache = runner.device, runner.cache
        self.tokens = torch.zeros(size, dtype=torch.long, device=dev)
        self.lengths = torch.zeros(size, dtype=torch.long, device=dev)
        self.index = torch.full((size,), cache.scratch, dtype=torch.long, device=dev)
        self.keys = torch.arange(cache.shape.max_len, device=dev)
        self.view = cache.static_decode_view(self.index, self.lengths)
        self.graph = None
        self.logits: Tensor | None = None
        if dev.type == "cuda":
            self._capture()

    def _forward(self) -> Tensor:
        r = self.runner
        allowed = (self.keys[None, :] <= self.lengths[:, None])[:, None, None, :]  # (B, 1, 1, max_len)
        embeds = r.lm.get_input_embeddings()(self.tokens[:, None])
        out = r.lm(inputs_embeds=embeds, attention_mask=r._mask(allowed), position_ids=self.lengths[:, None],
                   use_cache=True, **r._cache_kwargs(self.view), **r.logits_kw)
        return out.logits[:, -1]

    def _capture(self) -> None:
        # warm up on a side stream (as torch.cuda.graphs asks), then capture; the padding rows write to scratch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward()

    def run(self, slots: list[int], tokens: Tensor, lengths: Tensor) -> Tensor:
        n = len(slots)
        self.index.fill_(self.runner.cache.scratch)
        self.tokens.zero_()
        self.lengths.zero_()
        self.index[:n].copy_(torch.tensor(slots), non_blocking=True)
        self.tokens[:n].copy_(tokens, non_blocking=True)
        self.lengths[:n].copy_(lengths, non_blocking=True)
        if self.graph is None:
            return self._forward()[:n]
        self.graph.replay()
        return self.logits[:n]

