"""How the HF causal LM is called: position ids from the attention mask, and the KV-cache keyword of the installed
transformers version. Shared by the forward pass, generation and the embedder."""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn


def cache_kwargs(language_model: nn.Module, cache: Any) -> dict[str, Any]:
    """The KV-cache keyword of this transformers version (``cache`` in 5.x, ``past_key_values`` before)."""
    if cache is None:
        return {}
    return {_CACHE_ARG.setdefault(type(language_model), _cache_arg(language_model)): cache}


def output_cache(out: Any) -> Any:
    if "cache" in getattr(out, "__dataclass_fields__", {}):  # transformers 5.x (reading the old name warns)
        return out.cache
    return getattr(out, "past_key_values", None)


_CACHE_ARG: dict[type, str] = {}


def _cache_arg(language_model: nn.Module) -> str:
    return "cache" if "cache" in inspect.signature(type(language_model).forward).parameters else "past_key_values"


def positions_from_mask(attention_mask: Tensor) -> Tensor:
    """Position ids 0.. over the real tokens of each row (left-padded rows start counting at their first token)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
