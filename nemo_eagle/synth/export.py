"""Write the kept samples: LLaVA JSONL/JSON, WebDataset tar shards, images under ``OUT/images/``, the data card.

Everything here is a pure function of the journal, written atomically, so rerunning after a crash rewrites
the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_eagle.synth.filters import REASONS
from nemo_eagle.synth.journal import atomic_write_bytes, atomic_write_json, atomic_write_text

SHARD_PATTERN = "synth-{:06d}.tar"


@dataclass
class KeptSample:
    id: str
    image_rel: str  # relative to OUT, e.g. images/0123abcd.png
    image_src: Path
    conversations: list[dict[str, str]]

    def llava(self) -> dict[str, Any]:
        return {"id": self.id, "image": self.image_rel, "conversations": self.conversations}


def copy_images(out: Path, samples: list[KeptSample]) -> int:
    """Copy each kept image once to OUT/<image_rel>; returns how many were written now."""
    written = 0
    for rel, src in sorted({(s.image_rel, s.image_src) for s in samples}):
        dst = out / rel
        if dst.exists() and dst.stat().st_size == src.stat().st_size:
            continue
        atomic_write_bytes(dst, src.read_bytes())
        written += 1
    return written


def write_llava(out: Path, samples: list[KeptSample]) -> None:
    records = [s.llava() for s in samples]
    atomic_write_text(out / "data.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_json(out / "data.json", records)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed, so the same samples give byte-identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def write_shards(out: Path, samples: list[KeptSample], shard_size: int) -> list[str]:
    """WebDataset shards: per sample ``<id>.<ext>`` (image bytes) and ``<id>.json`` (id, image, conversations)."""
    shard_dir = out / "shards"
    names = []
    for start in range(0, len(samples), shard_size):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s in samples[start:start + shard_size]:
                ext = Path(s.image_rel).suffix.lstrip(".").lower()
                _tar_member(tar, f"{s.id}.{ext}", (out / s.image_rel).read_bytes())
                _tar_member(tar, f"{s.id}.json", json.dumps(s.llava(), ensure_ascii=False).encode())
        name = SHARD_PATTERN.format(start // shard_size)
        atomic_write_bytes(shard_dir / name, buf.getvalue())
        names.append(f"shards/{name}")
    if shard_dir.exists():  # shards left from an earlier, larger export
        for stale in sorted(shard_dir.glob("synth-*.tar")):
            if f"shards/{stale.name}" not in names:
                stale.unlink()
    return names


def render_card_markdown(card: dict[str, Any]) -> str:
    s = card["samples"]
    lines = [
        "# Synthetic data card",
        "",
        f"Teacher `{card['teacher']['model']}`; tasks {', '.join(card['tasks'])}; "
        f"{card['samples_per_task']} sample(s) per task and image; seed {card['seed']}.",
        "",
        f"Images: {card['images']['found']} found, {card['images']['unreadable']} unreadable, "
        f"{card['images']['duplicate_files']} byte-identical duplicates, {card['images']['used']} used.",
        "",
        "| bucket | " + " | ".join(card["tasks"]) + " | total |",
        "|---" * (len(card["tasks"]) + 2) + "|",
    ]
    for bucket in ("expected", *REASONS, "kept"):
        per = [card["per_task"][t]["removed"].get(bucket, 0) if bucket in REASONS else card["per_task"][t][bucket]
               for t in card["tasks"]]
        total = s["removed"][bucket] if bucket in REASONS else s[bucket]
        label = bucket if bucket in ("expected", "kept") else f"removed: {bucket}"
        lines.append(f"| {label} | " + " | ".join(str(v) for v in per) + f" | {total} |")
    lines += [
        "",
        f"expected = kept + removed: {s['expected']} = {s['kept']} + {sum(s['removed'].values())}",
        "",
        f"Filters: {json.dumps(card['filters'])}",
        "",
        f"Outputs: `{card['outputs']['jsonl']}` (LLaVA JSONL, image paths relative to this folder), "
        f"{len(card['outputs']['shards'])} WebDataset shard(s) under `shards/`.",
        "",
    ]
    return "\n".join(lines)


def write_card(out: Path, card: dict[str, Any]) -> None:
    atomic_write_json(out / "data_card.json", card)
    atomic_write_text(out / "data_card.md", render_card_markdown(card))
