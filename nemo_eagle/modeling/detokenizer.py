"""Incremental detokenisation and the one stop-string rule, shared by ``EagleModel.generate`` / ``stream`` and
the server.

The rule: stop strings are matched on the text decoded so far (so a stop string spanning several tokens, or
inside a multi-byte character, is found). Generation ends at the token whose text completes the first stop
string. Text outputs (``EagleModel.stream``, the server's completions) end just before the stop string: the
stop string itself is not returned (OpenAI semantics). ``EagleModel.generate`` returns ids, which cannot be cut
inside a token: it keeps the tokens up to and including the one that completed the stop string and pads the
rest. Text is held back while it could still be the start of a stop string, so nothing is ever taken back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_CHAR_TOKENS = 4  # byte-level tokens one UTF-8 character can span


class Detokenizer:
    """Incremental decoding of one row: printable text only (no half UTF-8 characters), stop strings cut off
    and never half-emitted."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = (), *, skip_special_tokens: bool = True):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0  # decode window: ids[prefix:read] is already reflected in `text`
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def add(self, token_id: int) -> str:
        """Feed one generated token; return the newly printable text (possibly empty)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        while True:
            before = self._decode(self.ids[self.prefix:self.read])
            after = self._decode(self.ids[self.prefix:])
            if len(after) > len(before) and not after.endswith("\ufffd"):
                self.text += after[len(before):]
                self.prefix, self.read = self.read, len(self.ids)
                break
            # Wait for the rest of a multi-byte character, but not forever: a UTF-8 character spans at most
            # MAX_CHAR_TOKENS byte tokens, so the oldest pending token cannot be part of one that completes
            # later: release it alone (as U+FFFD if invalid) and look at the rest again, as a decode of all
            # ids at once would.
            if len(self.ids) - self.read < MAX_CHAR_TOKENS:
                break
            self.text += self._decode(self.ids[self.prefix:self.read + 1])[len(before):]
            self.prefix, self.read = self.read, self.read + 1
        self._find_stop()
        return self._release(final=self.stopped)

    def flush(self) -> str:
        """Everything not yet returned, including a trailing incomplete character (as U+FFFD)."""
        if self.read < len(self.ids) and not self.stopped:
            before = self._decode(self.ids[self.prefix:self.read])
            self.text += self._decode(self.ids[self.prefix:])[len(before):]
            self.prefix = self.read = len(self.ids)
            self._find_stop()
        return self._release(final=True)

    def _find_stop(self) -> None:
        hits = [at for at in (self.text.find(s) for s in self.stop) if at >= 0]
        if hits:
            self.text, self.stopped = self.text[:min(hits)], True

    def _release(self, final: bool) -> str:
        safe = len(self.text)
        if not final:  # hold back a tail that could still become a stop sequence
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        out = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out
