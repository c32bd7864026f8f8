"""Helpers for the training tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}
QUESTION = "What colour is this?"


def write_color_dataset(root: Path) -> Path:
    """One solid-colour image per answer; the answer can only come from the image (same question for all)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for name, rgb in COLORS.items():
        Image.new("RGB", (28, 28), rgb).save(root / "images" / f"{name}.png")
        recs.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def tiny_overrides(tiny_ckpt: Path, data: Path, exp_dir: Path, *extra: str) -> list[str]:
    """Hydra overrides for a tiny random model on the colour data, on CPU."""
    return ["model=tiny", f"model.tokenizer_from={tiny_ckpt}", f"data.train_manifest={data / 'train.jsonl'}",
            "trainer=cpu_debug", "precision=fp32", "data.num_workers=0", "trainer.enable_progress_bar=false",
            f"exp_dir={exp_dir}", *extra]


def ask(model, processor, image: Path, max_new_tokens: int = 6) -> str:
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    )
    batch = processor(text=prompt, images=[str(image)])
    return processor.decode(model.generate(**batch, max_new_tokens=max_new_tokens)[0])
