"""Client for any OpenAI-compatible chat endpoint: rate limit, retries with exponential backoff, response cache.

Retryable failures (429, 408, 409, 5xx, timeouts, refused connections) are retried with backoff (a
``Retry-After`` header wins); other 4xx answers are final. Cached replies are never requested again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from nemo_eagle.synth.journal import atomic_write_json

log = logging.getLogger(__name__)

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class TeacherError(RuntimeError):
    """A request that failed for good. ``retryable`` says whether a later run may succeed."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def image_data_url(data: bytes) -> str:
    """``data:<mime>;base64,...`` for the image bytes; formats a chat API may not accept are sent as PNG."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        if fmt not in _MIME:
            buf = io.BytesIO()
            img.convert("RGBA" if "A" in img.getbands() else "RGB").save(buf, format="PNG")
            data, fmt = buf.getvalue(), "PNG"
    return f"data:{_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def chat_completions_url(url: str) -> str:
    """Accept a base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` route."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class RateLimiter:
    """At most ``rps`` request starts per second (evenly spaced); ``rps <= 0`` means unlimited."""

    def __init__(self, rps: float):
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


class ResponseCache:
    """One JSON file per request key under ``root/ab/<key>.json``, written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        p = self._path(key)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("ignoring unreadable cache entry %s", p)
            return None

    def put(self, key: str, value: dict) -> None:
        atomic_write_json(self._path(key), value, fsync=False)  # a lost entry only costs a repeat request


def cache_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass
class TeacherStats:
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    failures: int = 0


class TeacherClient:
    """Async chat-completions client; ``ask`` returns the reply text (from the cache when present)."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, max_retries: int = 5,
                 rate_limit: float = 0.0, timeout: float = 120.0, backoff: float = 0.5, max_backoff: float = 30.0,
                 cache: ResponseCache | None = None):
        self.url = chat_completions_url(url)
        self.model = model
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.limiter = RateLimiter(rate_limit)
        self.cache = cache
        self.stats = TeacherStats()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def ask(self, *, key: str, image_url: str, prompt: str, temperature: float, max_tokens: int,
                  seed: int | None = None) -> str:
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return hit["content"]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                      {"type": "text", "text": prompt}]}],
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        content = await self._post(body)
        if self.cache is not None:
            self.cache.put(key, {"content": content, "model": self.model, "prompt": prompt})
        return content

    async def _post(self, body: dict[str, Any]) -> str:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
            await self.limiter.wait()
            self.stats.requests += 1
            retry_after = None
            try:
                resp = await self._client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    return _reply_text(resp)
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in RETRYABLE_STATUS:
                    self.stats.failures += 1
                    raise TeacherError(last, retryable=False)
                retry_after = _retry_after(resp)
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (1 + 0.25 * random.random())
                delay = max(delay, retry_after or 0.0)
                log.debug("teacher: %s; retry %d/%d in %.2fs", last, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
        self.stats.failures += 1
        raise TeacherError(f"gave up after {self.max_retries + 1} attempts: {last}", retryable=True)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return min(float(value), 60.0) if value is not None else None
    except ValueError:
        return None


def _reply_text(resp: httpx.Response) -> str:
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise TeacherError(f"reply is not a chat completion ({e}): {resp.text[:200]}", retryable=False) from e
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""
