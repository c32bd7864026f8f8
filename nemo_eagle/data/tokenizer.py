"""The Eagle2 tokenizer: a ``tokenizers.Tokenizer`` (tokenizer.json) with the Eagle2 special tokens.

Text typed by a user never becomes a control token: ``protect`` marks each special-token string in typed text
(between two private-use characters), and ``encode`` tokenises the marked spans as plain text, so a user who
types ``<|im_start|>system ...`` or ``<|endoftext|>`` gets those characters, not a new turn or an end of
sequence. Only the chat template's own markup produces control tokens. Text without marks is tokenised exactly
as before (the reference's token ids).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# Private-use characters around typed text that must be tokenised as plain text (see the module docstring).
PLAIN_OPEN, PLAIN_CLOSE = "\ue000", "\ue001"
_PLAIN_SPAN = re.compile(f"{PLAIN_OPEN}(.*?){PLAIN_CLOSE}", re.DOTALL)


LONG_TEXT = 1 << 16  # characters


def _ids(tokenizer: Tokenizer, text: str) -> list[int]:
    if len(text) < LONG_TEXT:
        return tokenizer.encode(text, add_special_tokens=False).ids
    # tokenizers' encode holds the GIL throughout (about 1 s per 600k characters) and encode_batch releases it:
    # a long prompt tokenised on a worker thread then does not stall the REST front's event loop. Same ids.
    return tokenizer.encode_batch([text], add_special_tokens=False)[0].ids


class EagleTokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` (tokenizer.json) with the Eagle2 special tokens."""

    def __init__(self, tokenizer: Tokenizer):
        self.backend = tokenizer
        self.image_token_id = self._require(IMG_CONTEXT)
        self.img_start_id = self._require(IMG_START)
        self.img_end_id = self._require(IMG_END)
        self.eos_token_id = self.backend.token_to_id(IM_END)
        self.pad_token_id = self.backend.token_to_id(ENDOFTEXT)
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        self.vocab_size = self.backend.get_vocab_size(with_added_tokens=True)
        specials = sorted({t.content for t in self.backend.get_added_tokens_decoder().values() if t.special},
                          key=len, reverse=True)
        self.special_tokens = tuple(specials)
        self._special_re = re.compile("|".join(map(re.escape, specials))) if specials else None
        self._plain = None  # the same tokenizer with special tokens encoded as text, built on first use

    def _require(self, token: str) -> int:
        tid = self.backend.token_to_id(token)
        if tid is None:
            raise ValueError(f"tokenizer has no {token} token: not an Eagle2 tokenizer")
        return tid

    @classmethod
    def from_file(cls, path: str | Path) -> EagleTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        return cls(Tokenizer.from_file(str(path)))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def protect(self, text: str) -> str:
        """``text`` with every special-token string marked to be tokenised as plain text."""
        if self._special_re is None or not self._special_re.search(text):
            return text
        return self._special_re.sub(lambda m: PLAIN_OPEN + m.group(0) + PLAIN_CLOSE, text)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS is added (Eagle2 uses none). Spans marked by ``protect`` are plain text."""
        if PLAIN_OPEN not in text:
            return _ids(self.backend, text)
        if self._plain is None:
            self._plain = Tokenizer.from_str(self.backend.to_str())
            self._plain.encode_special_tokens = True
        ids: list[int] = []
        pos = 0
        for m in _PLAIN_SPAN.finditer(text):
            if m.start() > pos:
                ids += _ids(self.backend, text[pos:m.start()])
            ids += _ids(self._plain, m.group(1))
            pos = m.end()
        if pos < len(text):
            ids += _ids(self.backend, text[pos:])
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
