"""The Eagle2 tokenizer: a ``tokenizers.Tokenizer`` (tokenizer.json) with the Eagle2 special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


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

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no BOS is added (Eagle2 uses none)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
