"""Helpers for the data tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image


def small_processor(ckpt: Path, *, tile: int = 28, max_tiles: int = 4):
    from nemo_eagle.config import TilingConfig
    from nemo_eagle.data.processor import EagleProcessor, EagleTokenizer

    tok = EagleTokenizer.from_file(ckpt / "tokenizer.json")
    template = json.loads((ckpt / "chat_template.json").read_text())["chat_template"]
    return EagleProcessor(
        tok, TilingConfig(tile_size=tile, max_tiles=max_tiles), tokens_per_tile=1, chat_template=template
    )


def write_image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_shard(path: Path, samples: list[tuple[str, dict[str, Any], list[tuple[str, bytes]]]]) -> Path:
    """A WebDataset shard: per sample ``<key>.json`` and ``<key>.<ext>`` image members."""
    import io

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as tar:
        for key, rec, images in samples:
            for ext, data in images:
                add(tar, f"{key}.{ext}", data)
            add(tar, f"{key}.json", json.dumps(rec).encode())
    return path


def llava(sid: str, image: Any, turns: list[tuple[str, str]]) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": sid, "conversations": [{"from": f, "value": v} for f, v in turns]}
    if image is not None:
        rec["image"] = image
    return rec
