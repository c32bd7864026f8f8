"""EagleProcessor: prompt rendering, image tiling and tokenisation, exactly as NVIDIA's processor does them.

Training, evaluation, serving and embedding all call this one class, so a model is never trained with one
tiling and served with another. The tiling contract comes from the checkpoint (``TilingConfig``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from nemo_eagle.config import EagleConfig, TilingConfig
from nemo_eagle.data import chat_template as ct
from nemo_eagle.data.images import ImageInput, load_image, load_pil, normalize_pil, tile_pil
from nemo_eagle.data.padding import pad_rows
from nemo_eagle.data.tokenizer import ENDOFTEXT, IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START, EagleTokenizer  # noqa: F401 - the token names are re-exported for callers
from nemo_eagle.ops import get_op
from nemo_eagle.tiling import TilePlan, fit_plans_to_budget, plan_tiles

log = logging.getLogger(__name__)

class EagleBatch(dict):
    """The processor's output: a dict of tensors (pass as ``model(**batch)``) plus the tiling ``plans``."""

    plans: list[TilePlan]

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> EagleBatch:
        out = EagleBatch({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})
        if dtype is not None and "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(dtype)
        out.plans = self.plans
        return out


class EagleProcessor:
    """Renders prompts, tiles images and tokenises, for one checkpoint's preprocessing contract."""

    def __init__(self, tokenizer: EagleTokenizer, tiling: TilingConfig, *, tokens_per_tile: int = 256,
                 chat_template: str | None = None, kernels: str = "auto", padding_side: str = "left",
                 device: str | torch.device | None = None):
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else None  # where tiling runs (GPU: fused kernel)
        self.tiling = tiling
        self.tokens_per_tile = tokens_per_tile
        self.chat_template = chat_template
        self.padding_side = padding_side
        self.tile_op = get_op("tile_images", kernels)

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, path: str | Path, *, config: EagleConfig | None = None, **kwargs: Any) -> EagleProcessor:
        """Load the preprocessing contract of any checkpoint (hub id, HF directory, ``.nemo``, megatron directory):
        tokenizer.json, chat_template.json, config.json, preprocessor_config.json. ``config`` overrides the stored
        model config (pass the loaded model's)."""
        from nemo_eagle.checkpoint import open_checkpoint

        ckpt = open_checkpoint(path)
        return cls.from_contract(ckpt.contract_dir, config or ckpt.config, **kwargs)

    @classmethod
    def from_contract(cls, path: Path, cfg: EagleConfig, **kwargs: Any) -> EagleProcessor:
        """The processor of a directory of contract files, for the model config ``cfg``."""
        tiling = cfg.tiling
        pre = path / "preprocessor_config.json"
        if pre.exists():
            p = json.loads(pre.read_text())
            tiling = replace(
                tiling,
                min_tiles=int(p.get("min_dynamic_tiles", tiling.min_tiles)),
                max_tiles=int(p.get("max_dynamic_tiles", tiling.max_tiles)),
                use_thumbnail=bool(p.get("use_thumbnail", tiling.use_thumbnail)),
                image_mean=tuple(p.get("image_mean", tiling.image_mean)),
                image_std=tuple(p.get("image_std", tiling.image_std)),
            )
        template = None
        tpl = path / "chat_template.json"
        if tpl.exists():
            template = json.loads(tpl.read_text())["chat_template"]
        tok = EagleTokenizer.from_file(path / "tokenizer.json")
        if cfg.image_token_id is not None and cfg.image_token_id != tok.image_token_id:
            raise ValueError(f"config.json image_token_index {cfg.image_token_id} != tokenizer's <IMG_CONTEXT> id "
                             f"{tok.image_token_id}: tokenizer and checkpoint do not belong together")
        return cls(tok, tiling, tokens_per_tile=cfg.tokens_per_tile, chat_template=template, **kwargs)

    # ----------------------------------------------------------------------------------------- prompts
    def apply_chat_template(self, messages: list[dict], *, add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        """Render ``messages`` (OpenAI/HF style, content a string or a list of image/text parts).

        Special-token text inside the messages is marked as plain text (``EagleTokenizer.protect``): only the
        template's own markup becomes control tokens."""
        messages = [self._protected(m) for m in messages] if isinstance(messages, list) else messages
        if self.tiling.prompt_format == "qwen2_chat":
            text = ct.render_qwen2_chat(messages, add_generation_prompt=add_generation_prompt)
        elif self.tiling.prompt_format == "eagle_chat":
            text = ct.render_eagle_chat(messages, add_generation_prompt=add_generation_prompt,
                                        legacy_bug=self.tiling.legacy_generation_prompt_bug)
        else:
            text = ct.render_eagle_2_5_vl(messages, self.chat_template, add_generation_prompt=add_generation_prompt)
        return self.tokenizer.encode(text) if tokenize else text

    def _protected(self, message: Any) -> Any:
        if not isinstance(message, dict):
            return message
        content = message.get("content")
        if isinstance(content, str):
            return {**message, "content": self.tokenizer.protect(content)}
        if isinstance(content, list):
            parts = [{**p, "text": self.tokenizer.protect(p["text"])} if isinstance(p, dict) and
                     isinstance(p.get("text"), str) else p for p in content]
            return {**message, "content": parts}
        return message

    @property
    def uses_legacy_placeholder(self) -> bool:
        """True when prompts mark images with ``<image>`` (eagle_chat, Eagle2-9B's qwen2_chat)."""
        return self.tiling.prompt_format in ("eagle_chat", "qwen2_chat")

    def count_image_placeholders(self, text: str) -> int:
        if self.uses_legacy_placeholder:
            return text.count(ct.LEGACY_IMAGE_PLACEHOLDER)
        return len(ct.IMAGE_PLACEHOLDER_RE.findall(text))

    def image_block(self, num_tiles: int) -> str:
        return IMG_START + IMG_CONTEXT * (num_tiles * self.tokens_per_tile) + IMG_END

    def expand_prompt(self, text: str, num_tiles: Sequence[int]) -> str:
        """Replace each image placeholder by its ``<img><IMG_CONTEXT>...</img>`` block (placeholder order)."""
        if self.uses_legacy_placeholder:
            parts = text.split(ct.LEGACY_IMAGE_PLACEHOLDER)
            out = [parts[0]]
            for n, rest in zip(num_tiles, parts[1:]):
                out += [self.image_block(n), rest]
            return "".join(out)
        counter = iter(range(len(num_tiles)))

        def sub(m) -> str:
            i = next(counter)
            return f"<image {m.group(1)}>" + self.image_block(num_tiles[i])

        return ct.IMAGE_PLACEHOLDER_RE.sub(sub, text)

    # ------------------------------------------------------------------------------------------ images
    def plan(self, image: Any, *, max_tiles: int | None = None) -> TilePlan:
        t = self.tiling
        w, h = _size(image)
        return plan_tiles(w, h, min_tiles=min(t.min_tiles, max_tiles or t.max_tiles),
                          max_tiles=max_tiles or t.max_tiles, use_thumbnail=t.use_thumbnail, tile_size=t.tile_size,
                          tokens_per_tile=self.tokens_per_tile)

    def tile(self, image: Any, plan: TilePlan) -> torch.Tensor:
        """uint8 (3, H, W) -> float32 (num_tiles, 3, S, S) through the registry's ``tile_images`` op.

        With ``tiling.resize == "pil"`` (Eagle2-9B) ``image`` is the PIL image from ``load_pil``.
        """
        t = self.tiling
        if t.resize == "pil":
            pixels = normalize_pil(tile_pil(image, plan.grid, t.tile_size, t.use_thumbnail), t.image_mean, t.image_std)
            return pixels.to(self.device) if self.device is not None else pixels
        if self.device is not None:
            image = image.to(self.device, non_blocking=True)
        return self.tile_op(image, plan.grid, t.tile_size, t.use_thumbnail, t.image_mean, t.image_std)

    def load(self, image: ImageInput, *, name: str | None = None) -> Any:
        """One image as this contract tiles it: a uint8 (3, H, W) tensor, or (``resize == "pil"``) a PIL image."""
        if self.tiling.resize == "pil":
            return load_pil(image, name=name, alpha=self.tiling.alpha)
        return load_image(image, name=name)

    def preprocess_images(self, images: Sequence[ImageInput], *, max_tiles: int | None = None,
                          max_image_tokens: int | None = None) -> tuple[torch.Tensor, list[TilePlan]]:
        """Load, plan and tile ``images``; with ``max_image_tokens`` the plans shrink to fit that budget together."""
        tensors = [self.load(img, name=_image_name(img, i)) for i, img in enumerate(images)]
        if max_image_tokens is not None:
            t = self.tiling
            limit = max_tiles or t.max_tiles
            plans = fit_plans_to_budget([_size(x) for x in tensors], max_image_tokens,
                                        min_tiles=min(t.min_tiles, limit), max_tiles=limit,
                                        use_thumbnail=t.use_thumbnail, tile_size=t.tile_size,
                                        tokens_per_tile=self.tokens_per_tile)
        else:
            plans = [self.plan(x, max_tiles=max_tiles) for x in tensors]
        for p in plans:
            log.debug("tiling plan: %s", p.describe())
        if not tensors:
            s = self.tiling.tile_size
            return torch.empty(0, 3, s, s, device=self.device), []
        return torch.cat([self.tile(x, p) for x, p in zip(tensors, plans)]), plans

    # --------------------------------------------------------------------------------------------- call
    def __call__(
        self,
        text: str | list[str],
        images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | ImageInput | None = None,
        *,
        return_tensors: str = "pt",
        max_tiles: int | None = None,
        max_image_tokens: int | None = None,
        padding_side: str | None = None,
    ) -> EagleBatch:
        """Tokenise prompts with their images.

        Args:
            text: one rendered prompt or a batch of them (from ``apply_chat_template``).
            images: a flat list consumed in placeholder order across the batch, or one list per prompt.
            max_tiles: per-call override of the checkpoint's tile limit.
            max_image_tokens: per-prompt image-token budget; tiles are reduced to fit (plans say so).

        Returns:
            ``EagleBatch`` with input_ids (B, L), attention_mask (B, L), pixel_values (T, 3, S, S),
            num_tiles (num_images,) and ``.plans``.
        """
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r} is not supported; use 'pt'")
        if max_tiles is not None and max_tiles < 1:
            raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text is empty")
        per_prompt = self._split_images(texts, images)
        all_pixels, all_plans, ids = [], [], []
        for i, (prompt, imgs) in enumerate(zip(texts, per_prompt)):
            pixels, plans = self.preprocess_images(imgs, max_tiles=max_tiles, max_image_tokens=max_image_tokens)
            expanded = self.expand_prompt(prompt, [p.num_tiles for p in plans])
            ids.append(self.tokenizer.encode(expanded))
            all_pixels.append(pixels)
            all_plans += plans
        batch = EagleBatch(self._pad(ids, padding_side or self.padding_side))
        batch["pixel_values"] = torch.cat(all_pixels) if all_pixels else torch.empty(0)
        batch["num_tiles"] = torch.tensor([p.num_tiles for p in all_plans], dtype=torch.long)
        batch.plans = all_plans
        return batch

    def _split_images(self, texts: list[str], images: Any) -> list[list[ImageInput]]:
        counts = [self.count_image_placeholders(t) for t in texts]
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        nested = len(images) > 0 and all(isinstance(x, (list, tuple)) for x in images)
        if nested:
            if len(images) != len(texts):
                raise ValueError(f"got image lists for {len(images)} prompts but {len(texts)} prompts")
            groups = [list(g) for g in images]
        else:
            if len(images) != sum(counts):
                raise ValueError(
                    f"{len(images)} image(s) given but the prompt(s) have {sum(counts)} image placeholder(s)"
                )
            it = iter(images)
            groups = [[next(it) for _ in range(c)] for c in counts]
        for i, (g, c) in enumerate(zip(groups, counts)):
            if len(g) != c:
                raise ValueError(f"prompt {i}: {len(g)} image(s) given but it has {c} image placeholder(s)")
        return groups

    def _pad(self, ids: list[list[int]], side: str) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_rows(ids, self.tokenizer.pad_token_id, side=side)
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------------------------------- decode
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, ids: torch.Tensor | list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(x, skip_special_tokens) for x in ids]

    def save_pretrained(self, out: str | Path) -> None:
        """Write the processor files of the official layout (chat_template, preprocessor/processor configs)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        t = self.tiling
        (out / "chat_template.json").write_text(
            json.dumps({"chat_template": self.chat_template or ct.EAGLE_2_5_VL_TEMPLATE})
        )
        (out / "preprocessor_config.json").write_text(json.dumps({
            "image_processor_type": "Eagle2_5_VLImageProcessorFast", "processor_class": "Eagle2_5_VLProcessor",
            "image_mean": list(t.image_mean), "image_std": list(t.image_std), "do_resize": False,
            "size": {"height": t.tile_size, "width": t.tile_size}, "max_dynamic_tiles": t.max_tiles,
            "min_dynamic_tiles": t.min_tiles, "tokens_per_tile": self.tokens_per_tile,
            "use_thumbnail": t.use_thumbnail, "do_rescale": True, "do_normalize": True, "do_pad": False,
            "do_convert_rgb": True}, indent=2))
        (out / "processor_config.json").write_text(
            json.dumps(
                {
                    "image_end_token": IMG_END,
                    "image_placeholder": "image",
                    "image_start_token": IMG_START,
                    "image_token": IMG_CONTEXT,
                    "processor_class": "Eagle2_5_VLProcessor",
                    "tokens_per_tile": self.tokens_per_tile,
                    "video_placeholder": "video",
                    "video_token": IMG_CONTEXT,
                },
                indent=2,
            )
        )
        self.tokenizer.backend.save(str(out / "tokenizer.json"))


def _size(image: Any) -> tuple[int, int]:
    """(width, height) of a loaded image (PIL or uint8 (3, H, W) tensor)."""
    if isinstance(image, torch.Tensor):
        return int(image.shape[-1]), int(image.shape[-2])
    return int(image.size[0]), int(image.size[1])


def _image_name(image: Any, index: int) -> str:
    """How errors name an image: its path when it has one, else its position."""
    if isinstance(image, (str, Path)) and not str(image).startswith("data:"):
        return f"image {index} ({image})"
    return f"image {index}"
