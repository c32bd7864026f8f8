"""Resolve a checkpoint argument (local directory or Hugging Face hub id) to a local directory."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


def resolve_checkpoint(name: str | os.PathLike) -> Path:
    """A local directory for ``name``: an existing path, or a hub id downloaded with ``huggingface_hub``."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is a directory but has no config.json: not an HF checkpoint")
        return path
    s = str(name)
    if s.startswith("hf://"):
        s = s[len("hf://"):]
    if not _HUB_ID.match(s):
        raise FileNotFoundError(
            f"model {str(name)!r} not found: no such local path, and not a hub id like nvidia/Eagle2-1B"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise FileNotFoundError(f"model {s!r} is not a local path and huggingface_hub is not installed") from e
    log.info("downloading %s from the Hugging Face hub", s)
    try:
        local = snapshot_download(s, allow_patterns=_ALLOW, cache_dir=os.environ.get("NIM_CACHE_PATH") or None)
    except Exception as e:  # noqa: BLE001 - offline, gated, missing repo: all mean "cannot get it"
        raise FileNotFoundError(
            f"model {s!r} is not a local path and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "check the name, your network, or HF_TOKEN for gated models"
        ) from e
    return Path(local)
