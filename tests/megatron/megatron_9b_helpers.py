"""Helpers for the Eagle2-9B megatron tests, importable by spawned worker ranks (which run the CPU shim first)."""

from __future__ import annotations

from pathlib import Path

QUESTION = "Describe this image in detail."


def nine_microbatches(ckpt: Path, image: Path) -> list[dict]:
    """Two one-tile micro-batches of the tiny 9B checkpoint (the image and its mirror; loss on all / the end)."""
    from PIL import Image

    from nemo_eagle import EagleProcessor
    from nemo_eagle.megatron.train import make_microbatch

    proc = EagleProcessor.from_pretrained(ckpt)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    )
    batch = proc(text=prompt, images=[Image.open(image)], max_tiles=1)
    ids, tile = batch["input_ids"], batch["pixel_values"]
    answer_only = ids.clone()
    answer_only[:, : ids.shape[1] - 6] = -100
    return [make_microbatch(ids, tile), make_microbatch(ids, tile.flip(-1), labels=answer_only)]


def nine_worker(ckpt: str, image: str) -> dict:
    """Spawned rank (world of 2): the 9B tower under TP=2, then PP=2 (vision, ConvNeXt and projector on stage 0)."""
    import megatron_cpu_shim

    megatron_cpu_shim.enable()
    from megatron_helpers import run_layout

    mbs = nine_microbatches(Path(ckpt), Path(image))
    return {"tp2": run_layout(Path(ckpt), mbs, tp=2, pp=1), "pp2": run_layout(Path(ckpt), mbs, tp=1, pp=2)}
