"""The engine's per-token log-probability records -> OpenAI's shapes: chat ``logprobs.content[]`` (``token``,
``logprob``, ``bytes``, ``top_logprobs``) and the legacy completions ``logprobs`` (``tokens``,
``token_logprobs``, ``top_logprobs``, ``text_offset``).

A token's ``bytes`` are its own bytes (byte-level BPE tokens can hold part of a UTF-8 character); its ``token``
is those bytes decoded (a partial character shows as U+FFFD), or ``token_id:<id>`` when the request asks for
ids (vLLM's ``return_tokens_as_token_ids``)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from nemo_eagle.serve.schema import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (the one ``tokenizers``' ByteLevel uses): character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenText:
    """Text and bytes of single token ids of one tokenizer (``EagleTokenizer``)."""

    def __init__(self, tokenizer: Any, *, as_ids: bool = False):
        self.backend, self.as_ids = tokenizer.backend, as_ids
        self.added = {int(i) for i in self.backend.get_added_tokens_decoder()}
        self.byte_level = type(self.backend.decoder).__name__ == "ByteLevel"

    def bytes(self, tid: int) -> list[int]:
        piece = self.backend.id_to_token(tid) or ""
        if self.byte_level and tid not in self.added:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return [table[c] for c in piece]
        if tid in self.added:
            return list(piece.encode())
        return list(self.backend.decode([tid], skip_special_tokens=False).encode())

    def text(self, tid: int) -> str:
        if self.as_ids:
            return f"token_id:{tid}"
        return bytes(self.bytes(tid)).decode("utf-8", errors="replace")


def chat_logprobs(records: list[list], top: int, tt: TokenText) -> ChoiceLogprobs:
    content = []
    for tid, lp, alts in records:
        content.append(TokenLogprob(token=tt.text(tid), logprob=lp, bytes=tt.bytes(tid), top_logprobs=[
            TopLogprob(token=tt.text(a), logprob=alp, bytes=tt.bytes(a)) for a, alp in alts[:top]]))
    return ChoiceLogprobs(content=content)


def completion_logprobs(records: list[list], top: int, tt: TokenText, offset: int = 0) -> CompletionLogprobs:
    """``offset``: the ``text_offset`` of the first token (the length of the text before it)."""
    tokens, lps, tops, offsets = [], [], [], []
    for tid, lp, alts in records:
        text = tt.text(tid)
        tokens.append(text)
        lps.append(lp)
        tops.append({tt.text(a): alp for a, alp in alts[:top]})
        offsets.append(offset)
        offset += len(bytes(tt.bytes(tid)).decode("utf-8", errors="replace"))
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets)
