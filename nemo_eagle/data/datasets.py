"""Conversation datasets for training: LLaVA JSON/JSONL, OpenAI ``messages`` JSON/JSONL, WebDataset tar shards.

Every sample becomes one ``Conversation`` (OpenAI-style messages with ``{"type": "image"}`` parts, plus the
image sources in placeholder order) and is tokenised through ``EagleProcessor`` (its chat template, tiling and
image-token expansion), so training sees exactly the prompts serving renders. Labels keep only assistant
tokens. A scan at construction validates every sample (structure, image files, image headers) and measures
its token count per tile limit, which the batch planner uses for token budgets and mixture of resolution.

Bad samples (missing image file, more ``<image>`` tags than images, empty conversation, ...) are reported with
the sample id and skipped with a count (``on_bad_sample="skip"``) or stop the run (``"error"``).
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from nemo_eagle.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_data_url, load_image, read_image_header
from nemo_eagle.data.tokenizer import IM_END, IM_START

if TYPE_CHECKING:
    from nemo_eagle.data.processor import EagleProcessor

log = logging.getLogger(__name__)

IMAGE_TAG = "<image>"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
ASSISTANT_HEADER = f"{IM_START}assistant\n"
IGNORE_INDEX = -100


class BadSampleError(ValueError):
    """A sample that cannot be trained on; ``reason`` is a short key, the message names the sample."""

    def __init__(self, sample_id: str, reason: str, detail: str, where: str = ""):
        self.sample_id, self.reason, self.detail, self.where = sample_id, reason, detail, where
        at = f" ({where})" if where and where != sample_id else ""
        super().__init__(f"bad sample {sample_id!r}{at}: {detail}")


@dataclass(frozen=True)
class TarMember:
    """An image stored inside a tar shard (read by offset, no extraction)."""

    shard: str
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


ImageRef = Path | TarMember | str  # str: a data URL


@dataclass
class Conversation:
    id: str
    messages: list[dict[str, Any]]  # OpenAI/HF style; image parts are {"type": "image"}
    images: list[ImageRef]  # one per image part, in order
    where: str = ""


@dataclass
class SampleMeta:
    image_sizes: list[tuple[int, int]]  # (width, height) after EXIF orientation
    text_tokens: int  # tokens of the prompt with every image block empty


# ------------------------------------------------------------------------------------------- parsing records
def _split_tags(text: str) -> list[dict[str, Any]]:
    """``"<image>\\nWhat is it?"`` -> [image part, text part]; one newline next to a tag is dropped."""
    pieces = text.split(IMAGE_TAG)
    parts: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        if k > 0:
            parts.append({"type": "image"})
            piece = piece.removeprefix("\n")
        if k < len(pieces) - 1:
            piece = piece.removesuffix("\n")
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def _image_source(part: dict[str, Any]) -> Any:
    """The source named inside an image part, or None when the part takes the next entry of ``images``."""
    if part.get("type") == "image_url" or "image_url" in part:
        url = part.get("image_url")
        return url.get("url") if isinstance(url, dict) else url
    src = part.get("image")
    return src if isinstance(src, str) and src else part.get("path")


def _resolve_image(src: Any, image_root: Path, sid: str, where: str) -> ImageRef:
    if isinstance(src, TarMember):
        return src
    if isinstance(src, dict):
        src = src.get("url") or src.get("path")
    if not isinstance(src, str) or not src:
        raise BadSampleError(sid, "bad_record", f"image entry {src!r} is not a path or URL", where)
    if src.startswith("data:"):
        return src
    if src.startswith(("http://", "https://")):
        raise BadSampleError(sid, "unsupported_image", f"remote image {src!r}: download images before training", where)
    path = Path(src.removeprefix("file://")).expanduser()
    return path if path.is_absolute() else image_root / path


def normalise_messages(messages: Any, images: Sequence[Any], *, sid: str, where: str = "",
                       image_root: Path | None = None) -> Conversation:
    """Messages (string contents may hold ``<image>`` tags) + image list -> a validated ``Conversation``.

    Image placeholders (``<image>`` tags, ``{"type": "image"}`` parts without a source) take ``images`` in order;
    parts with their own source (``image_url``) use it. Images without any placeholder go before the text
    of the first user turn (LLaVA convention).
    """
    root = image_root or Path(".")
    if not isinstance(messages, list) or not messages:
        raise BadSampleError(sid, "empty_conversation", "the conversation has no turns", where)
    pending = list(images)
    used_pending = 0
    out_msgs: list[dict[str, Any]] = []
    refs: list[ImageRef] = []
    for t, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadSampleError(sid, "bad_record", f"turn {t} is not an object", where)
        role = ROLES.get(str(m.get("role", m.get("from"))))
        if role is None:
            raise BadSampleError(
                sid, "bad_record", f"turn {t} has unknown role {m.get('role', m.get('from'))!r}", where
            )
        content = m.get("content", m.get("value"))
        if isinstance(content, str):
            parts = _split_tags(content) if IMAGE_TAG in content else [{"type": "text", "text": content}]
        elif isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, str):
                    parts += _split_tags(p)
                elif isinstance(p, dict) and (p.get("type") in ("image", "image_url") or "image_url" in p):
                    parts.append(dict(p))
                elif isinstance(p, dict) and isinstance(p.get("text"), str):
                    parts += _split_tags(p["text"]) if IMAGE_TAG in p["text"] else [{"type": "text", "text": p["text"]}]
                else:
                    raise BadSampleError(sid, "bad_record", f"turn {t} has an unknown content part {p!r}", where)
        else:
            raise BadSampleError(sid, "bad_record", f"turn {t} content must be a string or a list of parts", where)
        norm: list[dict[str, Any]] = []
        for p in parts:
            if p.get("type") == "text":
                norm.append(p)
                continue
            src = _image_source(p)
            if src is None:
                if used_pending >= len(pending):
                    n_placeholders = _count_placeholders(messages)
                    raise BadSampleError(
                        sid,
                        "too_many_image_tags",
                        f"{n_placeholders} image placeholder(s) (<image> tags) but {len(pending)} image(s)",
                        where,
                    )
                src = pending[used_pending]
                used_pending += 1
            refs.append(_resolve_image(src, root, sid, where))
            norm.append({"type": "image"})
        out_msgs.append({"role": role, "content": norm})
    leftover = pending[used_pending:]
    if leftover:
        if used_pending:
            raise BadSampleError(sid, "too_few_image_tags",
                                 f"{used_pending} image placeholder(s) but {len(pending)} images", where)
        first_user = next((m for m in out_msgs if m["role"] == "user"), None)
        if first_user is None:
            raise BadSampleError(sid, "bad_record", "images given but there is no user turn to put them in", where)
        first_user["content"] = [{"type": "image"} for _ in leftover] + first_user["content"]
        refs = [_resolve_image(s, root, sid, where) for s in leftover] + refs
    _check_turns(out_msgs, sid, where)
    # plain-text turns go back to strings, as chat templates and serving requests usually have them
    for m in out_msgs:
        if all(p["type"] == "text" for p in m["content"]):
            m["content"] = "".join(p["text"] for p in m["content"])
    return Conversation(id=sid, messages=out_msgs, images=refs, where=where)


def _count_placeholders(messages: list[Any]) -> int:
    """Image placeholders that take an entry of the image list (for error messages)."""
    n = 0
    for m in messages:
        c = m.get("content", m.get("value")) if isinstance(m, dict) else None
        for p in [c] if isinstance(c, str) else c if isinstance(c, list) else []:
            if isinstance(p, str):
                n += p.count(IMAGE_TAG)
            elif isinstance(p, dict):
                n += str(p.get("text", "")).count(IMAGE_TAG)
                n += int(p.get("type") == "image" and _image_source(p) is None)
    return n


def _check_turns(messages: list[dict[str, Any]], sid: str, where: str) -> None:
    def text_of(m):
        c = m["content"]
        return c if isinstance(c, str) else "".join(p.get("text", "") for p in c)

    non_system = [m for m in messages if m["role"] != "system"]
    if not non_system or not any(m["role"] == "assistant" and text_of(m).strip() for m in messages):
        raise BadSampleError(sid, "empty_conversation", "no assistant turn with text: nothing to learn", where)
    if non_system[0]["role"] != "user":
        raise BadSampleError(sid, "bad_record", "the conversation must start with a user turn", where)


def conversation_from_record(rec: Any, *, where: str, image_root: Path, fmt: str = "auto",
                             default_id: str = "") -> Conversation:
    """One manifest record (LLaVA ``conversations`` or OpenAI ``messages``) -> ``Conversation``."""
    if not isinstance(rec, dict):
        raise BadSampleError(default_id or where, "bad_record", "record is not a JSON object", where)
    sid = str(rec.get("id", default_id or where))
    if fmt == "auto":
        fmt = "llava" if "conversations" in rec else "messages" if "messages" in rec else ""
        if not fmt:
            raise BadSampleError(sid, "empty_conversation", "record has neither 'conversations' nor 'messages'", where)
    key = "conversations" if fmt == "llava" else "messages"
    images = rec.get("image", rec.get("images"))
    images = [] if images is None else [images] if isinstance(images, (str, dict)) else list(images)
    return normalise_messages(rec.get(key), images, sid=sid, where=where, image_root=image_root)


# ------------------------------------------------------------------------------------------------- sources
def read_manifest(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSON list or JSONL file; a broken line is a bad record."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    text = path.read_text(encoding="utf-8")
    head = text.lstrip()[:1]
    if head == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        for i, rec in enumerate(records):
            yield f"{path.name}[{i}]", rec
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path.name}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{path.name}:{lineno}", _BrokenRecord(f"line is not valid JSON: {e}")


@dataclass
class _BrokenRecord:
    detail: str


def expand_shards(spec: str | Sequence[str]) -> list[Path]:
    """Shard paths from a .tar path, a directory, a glob, a brace pattern or a comma-separated list of them."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        for part in str(s).split(","):
            part = part.strip()
            if not part:
                continue
            if "{" in part:
                from braceexpand import braceexpand

                out += [Path(p) for p in braceexpand(part)]
            elif any(c in part for c in "*?["):
                out += [Path(p) for p in sorted(glob.glob(part))]
            elif Path(part).is_dir():
                out += sorted(Path(part).glob("*.tar"))
            else:
                out.append(Path(part))
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise FileNotFoundError(f"WebDataset shard(s) not found: {', '.join(missing[:5])}")
    if not out:
        raise FileNotFoundError(f"no WebDataset shards match {spec!r}")
    return out


def _is_image_ext(ext: str) -> bool:
    return ext.lower().rsplit(".", 1)[-1] in IMAGE_EXTS


def _member_order(ext: str) -> tuple[Any, ...]:
    """Numbered members in numeric order (``2.png`` before ``10.png``), then the rest by name."""
    head = ext.split(".", 1)[0]
    return (0, int(head), ext) if head.isdigit() else (1, 0, ext)


def read_shards(shards: Sequence[Path]) -> Iterator[tuple[str, Any, list[TarMember]]]:
    """(where, json record, image members) per sample key of WebDataset shards (``<key>.json`` + image files)."""
    for shard in shards:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        with tarfile.open(shard, "r:") as tar:
            for m in tar:  # headers only; data is skipped by seeking
                if not m.isfile():
                    continue
                dirname, fname = os.path.split(m.name)
                stem, _, ext = fname.partition(".")
                groups.setdefault(f"{dirname}/{stem}" if dirname else stem, {})[ext] = m
        for key, members in groups.items():
            where = f"{shard.name}:{key}"
            images = [TarMember(str(shard), members[e].offset_data, members[e].size, members[e].name)
                      for e in sorted(members, key=_member_order) if _is_image_ext(e)]
            if "json" not in members:
                yield where, _BrokenRecord(f"no {key}.json member in the shard"), images
                continue
            info = members["json"]
            data = TarMember(str(shard), info.offset_data, info.size, info.name).read()
            try:
                rec = json.loads(data)
            except json.JSONDecodeError as e:
                rec = _BrokenRecord(f"{info.name} is not valid JSON: {e}")
            if isinstance(rec, dict):
                rec.setdefault("id", key)
            yield where, rec, images


def detect_format(manifest: str) -> str:
    s = str(manifest)
    if s.endswith((".tar", "*.tar")) or "{" in s or Path(s).is_dir():
        return "webdataset"
    return "auto"


# ------------------------------------------------------------------------------------------------ encoding
def image_size(ref: ImageRef, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as ``load_image`` will see it (EXIF rotation applied), reading only the header."""
    if isinstance(ref, TarMember):
        src: Any = ref.read()
    elif isinstance(ref, str):
        src = decode_data_url(ref)
    else:
        src = ref
    head = read_image_header(src, name=describe_ref(ref), max_pixels=max_pixels)
    return head.width, head.height


def describe_ref(ref: ImageRef) -> str:
    if isinstance(ref, TarMember):
        return f"{Path(ref.shard).name}:{ref.name}"
    return "data URL" if isinstance(ref, str) else str(ref)


def load_ref(ref: ImageRef) -> torch.Tensor:
    if isinstance(ref, TarMember):
        return load_image(ref.read(), name=describe_ref(ref))
    return load_image(ref, name=describe_ref(ref))


def render_with_spans(processor: EagleProcessor, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of assistant replies (content + ``<|im_end|>``).

    Each turn's text is what rendering ``messages[:k+1]`` adds to ``messages[:k]``, so the spans follow
    whatever the checkpoint's chat template does.
    """
    prev, spans = "", []
    for k, m in enumerate(messages):
        cur = processor.apply_chat_template(messages[: k + 1], add_generation_prompt=False)
        if not cur.startswith(prev):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot find replies")
        if m["role"] == "assistant":
            seg = cur[len(prev):]
            if not seg.startswith(ASSISTANT_HEADER):
                raise ValueError(f"assistant turn {k} does not start with {ASSISTANT_HEADER!r}")
            end = seg.rfind(IM_END)
            end = end + len(IM_END) if end >= 0 else len(seg.rstrip("\n"))
            spans.append((len(prev) + len(ASSISTANT_HEADER), len(prev) + end))
        prev = cur
    return prev, spans


def expand_with_spans(processor: EagleProcessor, text: str, spans: list[tuple[int, int]],
                      num_tiles: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """Expand image placeholders piece by piece so the assistant spans move with the text."""
    cuts = sorted({0, len(text), *[c for s in spans for c in s]})
    starts = {s for s, _ in spans}
    out, new_spans, used, pos = [], [], 0, 0
    span_start = None
    for a, b in itertools.pairwise(cuts):
        piece = text[a:b]
        n = processor.count_image_placeholders(piece)
        expanded = processor.expand_prompt(piece, list(num_tiles[used:used + n])) if n else piece
        used += n
        if a in starts:
            span_start = pos
        out.append(expanded)
        pos += len(expanded)
        if span_start is not None and any(e == b for _, e in spans):
            new_spans.append((span_start, pos))
            span_start = None
    if used != len(num_tiles):
        raise ValueError(f"{used} image placeholder(s) rendered but {len(num_tiles)} image(s) tiled")
    return "".join(out), new_spans


def encode_conversation(processor: EagleProcessor, conv: Conversation, *, max_tiles: int | None = None,
                        images: Sequence[torch.Tensor] | None = None) -> dict[str, Any]:
    """Tokenise one conversation: input_ids, labels (assistant tokens only), pixel_values, num_tiles."""
    try:
        loaded = list(images) if images is not None else [load_ref(r) for r in conv.images]
    except ImageError as e:
        raise BadSampleError(conv.id, "unreadable_image", str(e), conv.where) from e
    pixels, plans = processor.preprocess_images(loaded, max_tiles=max_tiles)
    text, spans = render_with_spans(processor, conv.messages)
    expanded, spans = expand_with_spans(processor, text, spans, [p.num_tiles for p in plans])
    enc = processor.tokenizer.backend.encode(expanded, add_special_tokens=False)
    ids = torch.tensor(enc.ids, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    starts = torch.tensor([o[0] for o in enc.offsets], dtype=torch.long)
    ends = torch.tensor([o[1] for o in enc.offsets], dtype=torch.long)
    for a, b in spans:
        inside = (starts >= a) & (starts < b) & (ends > starts)
        labels[inside] = ids[inside]
    tok = processor.tokenizer
    for special in (tok.image_token_id, tok.img_start_id, tok.img_end_id):
        labels[ids == special] = IGNORE_INDEX
    return {"id": conv.id, "input_ids": ids, "labels": labels, "pixel_values": pixels,
            "num_tiles": [p.num_tiles for p in plans]}


def prompt_tokens(processor: EagleProcessor, conv: Conversation) -> int:
    """Tokens of the rendered conversation with every image block empty (image tokens are added per plan)."""
    text = processor.apply_chat_template(conv.messages, add_generation_prompt=False)
    n = processor.count_image_placeholders(text)
    if n != len(conv.images):
        raise BadSampleError(conv.id, "too_many_image_tags",
                             f"{n} image placeholder(s) rendered but {len(conv.images)} image(s)", conv.where)
    return len(processor.tokenizer.encode(processor.expand_prompt(text, [0] * n)))


# ------------------------------------------------------------------------------------------------- dataset
@dataclass
class ScanReport:
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.kept} sample(s), none skipped"
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        return f"{self.kept} of {self.total} sample(s) kept; skipped {sum(self.skipped.values())} ({reasons})"


class ConversationDataset(torch.utils.data.Dataset):
    """A map-style dataset of conversations; ``ds[i]`` or ``ds[(i, max_tiles)]`` -> an encoded sample dict.

    Returns None for a sample that fails while loading (corrupt image data) under ``on_bad_sample="skip"``;
    the collator drops it. Scanning happens once, here, in the main process.
    """

    def __init__(self, manifest: str | Sequence[str], processor: EagleProcessor, *, image_root: str | None = None,
                 fmt: str = "auto", on_bad_sample: str = "skip", name: str = "train"):
        if on_bad_sample not in ("skip", "error"):
            raise ValueError(f"on_bad_sample must be 'skip' or 'error', got {on_bad_sample!r}")
        self.processor = processor
        self.on_bad_sample = on_bad_sample
        self.name = name
        self.tokens_per_tile = processor.tokens_per_tile
        self.samples: list[Conversation] = []
        self.meta: list[SampleMeta] = []
        self.report = ScanReport()
        self._tile_cache: dict[tuple[int, int, int | None], int] = {}
        self._scan(manifest, image_root, fmt)

    # --------------------------------------------------------------------------------------------- scan
    def _records(self, manifest: str | Sequence[str], image_root: str | None, fmt: str):
        if fmt == "auto" and isinstance(manifest, str):
            fmt = detect_format(manifest) if detect_format(manifest) == "webdataset" else "auto"
        if fmt == "webdataset":
            for where, rec, members in read_shards(expand_shards(manifest)):
                shard_dir = Path(where.split(":")[0]).parent
                root = Path(image_root) if image_root else shard_dir
                yield where, rec, members, root, "auto"
            return
        paths = str(manifest).split(",") if isinstance(manifest, (str, Path)) else list(manifest)
        for p in (str(p).strip() for p in paths):
            root = Path(image_root).expanduser() if image_root else Path(p).expanduser().resolve().parent
            for where, rec in read_manifest(Path(p).expanduser()):
                yield where, rec, None, root, fmt

    def _scan(self, manifest: str | Sequence[str], image_root: str | None, fmt: str) -> None:
        t0, rep = time.monotonic(), self.report
        for where, rec, members, root, rfmt in self._records(manifest, image_root, fmt):
            rep.total += 1
            try:
                if isinstance(rec, _BrokenRecord):
                    raise BadSampleError(where, "bad_record", rec.detail, where)
                if members:  # images stored in the shard replace the record's own image paths
                    rec = {k: v for k, v in rec.items() if k not in ("image", "images")} | {"images": list(members)}
                conv = conversation_from_record(rec, where=where, image_root=root, fmt=rfmt)
                sizes = []
                for ref in conv.images:
                    if isinstance(ref, Path) and not ref.exists():
                        raise BadSampleError(conv.id, "missing_image", f"image file not found: {ref}", where)
                    try:
                        sizes.append(image_size(ref))
                    except ImageError as e:
                        raise BadSampleError(conv.id, "unreadable_image", str(e), where) from e
                meta = SampleMeta(image_sizes=sizes, text_tokens=prompt_tokens(self.processor, conv))
            except BadSampleError as e:
                self.reject(e)
                continue
            self.samples.append(conv)
            self.meta.append(meta)
            if rep.total % 10000 == 0:
                log.info(
                    "%s data: scanned %d samples (%.0f/s)", self.name, rep.total, rep.total / (time.monotonic() - t0)
                )
        rep.kept = len(self.samples)
        log.log(logging.WARNING if rep.skipped else logging.INFO, "%s data: %s in %.1fs", self.name, rep.summary(),
                time.monotonic() - t0)
        if not self.samples:
            raise ValueError(f"{self.name} data has no usable samples ({rep.summary()})")

    def reject(self, err: BadSampleError) -> None:
        """Apply the bad-sample policy: raise, or log with the sample id and count it."""
        if self.on_bad_sample == "error":
            raise err
        self.report.skipped[err.reason] += 1
        log.warning("skipping %s", err)

    # ---------------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.samples)

    def num_tiles(self, i: int, max_tiles: int | None) -> int:
        return sum(self._tiles(w, h, max_tiles) for w, h in self.meta[i].image_sizes)

    def _tiles(self, w: int, h: int, max_tiles: int | None) -> int:
        key = (w, h, max_tiles)
        if key not in self._tile_cache:  # the processor's own plan; only the shape of the tensor is read
            self._tile_cache[key] = self.processor.plan(torch.empty(0, h, w), max_tiles=max_tiles).num_tiles
        return self._tile_cache[key]

    def num_tokens(self, i: int, max_tiles: int | None) -> int:
        """Exact token count of sample ``i`` tiled under ``max_tiles`` (None: the checkpoint's limit)."""
        return self.meta[i].text_tokens + self.num_tiles(i, max_tiles) * self.tokens_per_tile

    def __getitem__(self, key: int | tuple[int, int | None]) -> dict[str, Any] | None:
        i, max_tiles = key if isinstance(key, tuple) else (key, None)
        conv = self.samples[i]
        try:
            return encode_conversation(self.processor, conv, max_tiles=max_tiles)
        except BadSampleError as e:
            if self.on_bad_sample == "error":
                raise
            log.warning("skipping %s", e)
            return None

