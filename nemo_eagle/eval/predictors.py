"""Predictors: the model in process (``EagleModel`` + ``EagleProcessor``) or an OpenAI-compatible endpoint.

Both take the same already-prepared images (RGB, upscaled by the caller), the same text and the same tile
limit, and decode greedily, so the two give the same answers for the same weights. The endpoint gets images
as lossless PNG data URLs and the tile limit in the extra body field ``max_tiles``.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint could not be reached or refused a request."""


class EndpointRefused(EndpointError):
    """The endpoint answered, but refuses what this run asks for; rerunning the same command cannot help."""


AUTH_HINT = "the server refused the API key; set OPENAI_API_KEY or --api-key"
# Every benchmark's protocol tile limit fits under this (InfoVQA / OCRBench use 24).
PROTOCOL_MAX_TILES = 24


def _error_of(resp: Any) -> dict[str, Any]:
    """The OpenAI-shaped ``error`` object of a response, or {}."""
    try:
        err = resp.json().get("error")
    except (ValueError, AttributeError):
        return {}
    return err if isinstance(err, dict) else {}


def refusal(resp: Any, url: str, *, max_tiles: int | None = None) -> EndpointRefused | None:
    """A clear error for answers that no retry fixes (wrong key, a tile limit above the server's), else None."""
    err = _error_of(resp)
    said = f" (server: {err['message']})" if err.get("message") else ""
    if resp.status_code in (401, 403):
        return EndpointRefused(f"{AUTH_HINT}{said}")
    if resp.status_code == 400 and err.get("param") == "max_tiles" and max_tiles is not None:
        need = max(max_tiles, PROTOCOL_MAX_TILES)
        return EndpointRefused(
            f"the server at {url} allows fewer tiles per image than this benchmark's protocol asks for ({max_tiles})"
            f"{said}; restart it with `nemo-eagle serve --max-tiles {need}` (enough for every benchmark), "
            "or pass a lower --max-tiles here (the score then no longer follows the protocol)")
    return None


class Predictor(Protocol):
    def predict(self, prompt: str, images: list[Image.Image], *, max_tiles: int, max_new_tokens: int) -> str: ...

    def describe(self) -> dict[str, Any]: ...


def user_message_parts(prompt: str, num_images: int) -> list[dict[str, Any]]:
    return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]


class LocalPredictor:
    """Greedy generation with the checkpoint at ``path`` in this process."""

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: str = "float32"):
        import torch

        from nemo_eagle import EagleModel, EagleProcessor

        self.path = str(path)
        self.device = device
        self.dtype = dtype
        self.processor = EagleProcessor.from_pretrained(path)
        self.model = EagleModel.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        self._torch = torch

    def predict(self, prompt: str, images: list[Image.Image], *, max_tiles: int, max_new_tokens: int) -> str:
        messages = [{"role": "user", "content": user_message_parts(prompt, len(images))}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        batch = self.processor(text=text, images=images, max_tiles=max_tiles, return_tensors="pt")
        batch = batch.to(self.device, getattr(self._torch, self.dtype))
        with self._torch.inference_mode():
            ids = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
        return self.processor.decode(ids[0]).strip()

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "path": self.path, "dtype": self.dtype}


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class EndpointPredictor:
    """``POST {url}/chat/completions`` with temperature 0 and ``max_tiles``; retries 429/503 a few times."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 300.0,
                 max_retries: int = 4, client: Any = None):
        import httpx

        from nemo_eagle.synth.teacher import chat_completions_url

        self.url = chat_completions_url(url)
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout, headers=headers)
        self.model = model or self._first_model(url)

    def _first_model(self, url: str) -> str:
        import httpx

        models_url = self.url[: -len("/chat/completions")] + "/models"
        try:
            resp = self.client.get(models_url)
        except httpx.HTTPError as e:
            raise EndpointError(f"cannot reach {models_url} ({type(e).__name__}: {e})") from e
        refused = refusal(resp, models_url)
        if refused is not None:
            raise refused
        try:
            resp.raise_for_status()
            return resp.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
            # a server without /v1/models may still answer chat requests
            log.warning("could not list models at %s (%s); sending model 'eagle2' (pass --served-model to choose)",
                        models_url, e)
            return "eagle2"

    def predict(self, prompt: str, images: list[Image.Image], *, max_tiles: int, max_new_tokens: int) -> str:
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
        parts.append({"type": "text", "text": prompt})
        body = {"model": self.model, "messages": [{"role": "user", "content": parts}], "max_tokens": max_new_tokens,
                "temperature": 0.0, "max_tiles": max_tiles}
        import httpx

        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.post(self.url, json=body)
            except httpx.HTTPError as e:
                raise EndpointError(f"cannot reach {self.url} ({type(e).__name__}: {e})") from e
            if resp.status_code in (429, 503) and attempt < self.max_retries:
                time.sleep(min(30.0, 0.5 * 2**attempt))
                continue
            refused = refusal(resp, self.url, max_tiles=max_tiles)
            if refused is not None:
                raise refused
            if resp.status_code != 200:
                raise EndpointError(f"{self.url} answered HTTP {resp.status_code}: {resp.text[:300]}")
            try:
                return (resp.json()["choices"][0]["message"]["content"] or "").strip()
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise EndpointError(f"{self.url} did not answer with a chat completion: {resp.text[:300]}") from e
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "url": self.url, "model": self.model}
