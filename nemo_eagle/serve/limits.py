"""Request limits the REST front checks before any tokenising, so one request can neither stall the event loop
nor take the front's memory: text a tokenizer cannot encode (lone UTF-16 surrogates), the number of messages,
the characters of message text, and the completion length. Each violation is a 400 naming the parameter.
"""

from __future__ import annotations

import re
import weakref
from typing import Any

from nemo_eagle.serve.engine import EngineError

# A JSON string may carry "\ud800" escapes that decode to lone surrogates: valid for json.loads, not encodable as
# UTF-8, so every tokenizer, log line and response that touches them would fail.
_SURROGATE = re.compile("[\ud800-\udfff]")
_LONGEST_TOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_SCAN_CHARS = 1 << 20  # a long text is searched in pieces: the GIL can pass to the event loop between them


def has_surrogate(text: str) -> bool:
    if text.isascii():  # O(1) in CPython (a flag of the string): no surrogate in the common case, nothing to scan
        return False
    return any(_SURROGATE.search(text, i, i + _SCAN_CHARS) for i in range(0, len(text), _SCAN_CHARS))


def find_surrogate(value: Any, path: tuple = ()) -> tuple | None:
    """The location (keys and indices) of the first string holding a lone surrogate in decoded JSON, or None."""
    if isinstance(value, str):
        return path if has_surrogate(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and has_surrogate(k):
                return path  # the key itself: name its parent (the key cannot be echoed)
            if (found := find_surrogate(v, (*path, k))) is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (found := find_surrogate(v, (*path, i))) is not None:
                return found
    return None


def reject_surrogates(data: Any) -> None:
    """400 naming the field when a request body holds a lone surrogate (``\\ud800`` with no partner)."""
    where = find_surrogate(data)
    if where is not None:
        param = ".".join(str(p) for p in where) or None
        raise EngineError(f"{param or 'request body'}: the text holds a lone UTF-16 surrogate (an unpaired "
                          "\\ud800-\\udfff escape), which is not valid Unicode text", code="invalid_text", param=param)


def longest_token_chars(tokenizer: Any) -> int:
    """An upper bound on the characters one token covers: a raw vocabulary entry has one character per byte for
    byte-level BPE, and a decoded character is at least one byte. Computed once per tokenizer."""
    try:
        return _LONGEST_TOKEN[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = getattr(tokenizer, "backend", tokenizer).get_vocab()  # EagleTokenizer wraps a tokenizers.Tokenizer
    longest = max((len(t) for t in vocab), default=1)
    try:
        _LONGEST_TOKEN[tokenizer] = longest
    except TypeError:  # not weak-referenceable: recompute next time
        pass
    return longest


def text_limit(settings: Any, tokenizer: Any, max_model_len: int) -> int:
    """Most characters of message text per request: ``--max-prompt-chars``, or by default what the longest
    possible tokens could fit in the context (a longer text cannot fit, so nothing that fits is refused)."""
    if settings.max_prompt_chars is not None:
        return settings.max_prompt_chars
    return max_model_len * longest_token_chars(tokenizer)


def check_message_count(n: int, max_messages: int) -> None:
    if n > max_messages:
        raise EngineError(f"{n} messages in one request; this server accepts at most {max_messages}",
                          code="too_many_messages", param="messages")


def check_input_count(n: int, limit: int, param: str) -> None:
    """Embedding inputs or ranking passages in one request (``--max-batch-inputs``)."""
    if n > limit:
        raise EngineError(f"{n} {param} in one request; at most {limit} (split the request)",
                          code="too_many_inputs", param=param)


def check_messages(messages: list[Any], *, max_messages: int, max_chars: int) -> int:
    """Count messages and their text characters (pydantic ``ChatMessage``s) before anything renders them; return the
    characters."""
    check_message_count(len(messages), max_messages)
    total = 0
    for m in messages:
        if isinstance(m.content, str):
            total += len(m.content)
        else:
            total += sum(len(p.text) for p in m.content if getattr(p, "type", None) == "text")
    if total > max_chars:
        raise EngineError(f"the messages hold {total} characters of text; this server accepts at most {max_chars} "
                          "per request (no longer text can fit its context)", status=400, code="text_too_long",
                          param="messages")
    return total


def completion_cap(settings: Any, max_model_len: int) -> int:
    """Most completion tokens one request may ask for: ``--max-tokens-limit``, by default the context length
    (a KV-cache slot holds one whole context, so any request that fits the context fits its slot)."""
    cap = settings.max_tokens_limit
    return min(cap, max_model_len) if cap is not None else max_model_len


def check_completion_tokens(requested: int | None, param: str, cap: int) -> None:
    if requested is not None and requested > cap:
        raise EngineError(f"{param}={requested} exceeds this server's limit of {cap} completion tokens per request",
                          code="max_tokens_exceeded", param=param)
