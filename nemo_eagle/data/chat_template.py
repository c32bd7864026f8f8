"""Prompt rendering for both Eagle2 prompt formats.

``eagle_2_5_vl`` renders the processor's ``chat_template.json`` (not the tokenizer's own template) with
jinja2's sandbox and trim/lstrip blocks as transformers does; image parts become ``<image-k>`` placeholders.
``eagle_chat`` is the Jan 2025 format: ``<image>`` placeholders inside the user turn.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_SYSTEM = "You are a helpful assistant."

# The eagle_2_5_vl processor template as shipped in chat_template.json of the HF checkpoints.
EAGLE_2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}<image {{ image_count.value }}>{% endif %}"
    "<image-{{ image_count.value }}>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}<video {{ video_count.value }}>{% endif %}<video-{{ video_count.value }}>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IMAGE_PLACEHOLDER_RE = re.compile(r"<image-(\d+)>")
LEGACY_IMAGE_PLACEHOLDER = "<image>"


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{i}] has unknown role {m['role']!r}")
        if not isinstance(m["content"], (str, list)):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts")


def render_eagle_2_5_vl(messages: list[dict], template: str | None = None, *, add_generation_prompt: bool = True,
                        add_vision_id: bool = False) -> str:
    _check_messages(messages)
    return _compile(template or EAGLE_2_5_VL_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id)


def _is_image_part(part: dict) -> bool:
    return part.get("type") == "image" or "image" in part or "image_url" in part


def render_eagle_chat(messages: list[dict], *, add_generation_prompt: bool = True, legacy_bug: bool = False,
                      system: str = DEFAULT_SYSTEM, image_label: str = "Image-{k}: ") -> str:
    """The legacy format: ``<image>`` placeholders (``Image-k: <image>`` when a turn has several) in the user turn.

    ``legacy_bug`` reproduces the released code's ``<|im_end|>assistant\\n`` generation prompt. ``image_label``
    prefixes each placeholder when a turn has several images (``render_qwen2_chat`` passes Eagle2-9B's).
    """
    _check_messages(messages)
    out = []
    if messages[0]["role"] != "system":
        out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            text = content
        else:
            n_images = sum(1 for p in content if _is_image_part(p))
            pieces, k = [], 0
            for p in content:
                if _is_image_part(p):
                    k += 1
                    label = image_label.format(k=k) if n_images > 1 else ""
                    pieces.append(f"{label}{LEGACY_IMAGE_PLACEHOLDER}\n")
                elif "text" in p:
                    pieces.append(p["text"])
            text = "".join(pieces)
        out.append(f"<|im_start|>{m['role']}\n{text}<|im_end|>\n")
    if add_generation_prompt:
        if legacy_bug:
            out[-1] = out[-1][: -len("\n")]
            out.append("assistant\n")
        else:
            out.append("<|im_start|>assistant\n")
    return "".join(out)


def render_qwen2_chat(messages: list[dict], *, add_generation_prompt: bool = True, system: str = DEFAULT_SYSTEM) -> str:
    """Eagle2-9B's ``qwen2-chat`` template: ``<image>\\n`` per image (``<image k><image>\\n`` when a turn has
    several), the system prompt first, a plain ``<|im_start|>assistant\\n`` generation prompt."""
    return render_eagle_chat(messages, add_generation_prompt=add_generation_prompt, system=system,
                             image_label="<image {k}>")
