"""Foundation subcommands: ``chat``, ``tiles`` and ``create-tiny``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

EXAMPLE_IMAGE = Path(__file__).parent / "assets" / "example.png"
DEFAULT_MODEL = "nvidia/Eagle2-1B"


def _image_path(arg: str) -> str:
    return str(EXAMPLE_IMAGE) if arg == "example" else arg


FALLBACK_NAME = "tiny-eagle2-random-v2"  # v2: input-sensitive weights (v1 answered only special tokens)


def _fallback_checkpoint() -> Path:
    """A tiny random checkpoint in the user cache (created once) for machines without the hub.

    Its weights are scaled so that the greedy answer depends on the image and question and decodes to visible
    text: a newcomer sees that chat works end to end, and the notice says the answer is noise.
    """
    from nemo_eagle.convert.tiny import RANDOM_LABEL, create_tiny, make_input_sensitive

    root = Path(os.environ.get("NIM_CACHE_PATH") or Path.home() / ".cache" / "nemo_eagle") / FALLBACK_NAME
    if not (root / "model.safetensors").exists():
        import shutil
        import tempfile

        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))  # built aside, then moved in whole
        create_tiny(tmp)
        make_input_sensitive(tmp)
        if root.exists() and not (root / "model.safetensors").exists():
            shutil.rmtree(root)  # a torn earlier attempt
        try:
            tmp.rename(root)
        except OSError:  # another process moved its copy in first
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"[nemo-eagle] using {root}\n[nemo-eagle] {RANDOM_LABEL} The answer below is random text, not a reading "
          "of the image: it only shows that the pipeline runs.", file=sys.stderr)
    return root


def squeeze_blank_lines(pieces: Iterable[str]) -> Iterator[str]:
    """Streamed text without leading whitespace, without trailing whitespace, and with at most one blank line in a row.

    Whitespace is held back until visible text follows it, so a model that emits hundreds of newlines prints none.
    """
    started = False
    pending = ""
    for piece in pieces:
        pending += piece
        if not pending.strip():
            continue
        lead = len(pending) - len(pending.lstrip())
        gap, rest = pending[:lead], pending[lead:]
        if not started:
            gap = ""
        elif gap.count("\n") > 2:
            gap = "\n\n"
        body = rest.rstrip()
        tail = rest[len(body):]
        body = re.sub(r"\n[ \t\r\f\v]*(?:\n[ \t\r\f\v]*)+\n", "\n\n", body)  # inner runs of blank lines
        yield gap + body
        started = True
        pending = tail


def chat_main(argv: list[str]) -> int:
    from nemo_eagle.cli import add_device_arg, add_dtype_arg

    p = argparse.ArgumentParser(prog="nemo-eagle chat", description="Ask an Eagle2 model about images.")
    p.add_argument("question")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"HF directory, .nemo file or hub id (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--image", action="append", default=[], help="image file ('example' = the bundled chart); repeatable"
    )
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default 256; 32 on the random fallback)")
    p.add_argument("--max-tiles", type=int, default=None, help="override the checkpoint's tile limit")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    add_dtype_arg(p, help_default="bfloat16 on GPU, float32 on CPU")
    add_device_arg(p)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--kernels", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--draw-boxes", metavar="OUT.png", default=None, help="draw <box> outputs onto the first image")
    p.add_argument("--box-convention", default="norm1000", choices=["norm1000", "norm1", "pixel"])
    p.add_argument("--offline-fallback", action="store_true",
                   help="if the model cannot be found or downloaded, use a tiny RANDOM checkpoint (smoke test)")
    p.add_argument("--no-stream", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="log the tiling plan and kernel choices")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[%(name)s] %(message)s")

    import torch
    from PIL import Image

    from nemo_eagle.checkpoint import CheckpointError, open_checkpoint
    from nemo_eagle.data.images import ImageError
    from nemo_eagle.data.processor import EagleProcessor
    from nemo_eagle.modeling.eagle import EagleModel

    try:
        path = open_checkpoint(args.model).path
    except (FileNotFoundError, CheckpointError) as e:
        if not args.offline_fallback:
            print(f"nemo-eagle chat: {e}", file=sys.stderr)
            return 2
        print(f"[nemo-eagle] {e}; falling back", file=sys.stderr)
        path = _fallback_checkpoint()
        if args.max_new_tokens is None:
            args.max_new_tokens = 32  # noise: a line of it shows the pipeline runs
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    try:
        model = EagleModel.from_pretrained(path, dtype=dtype, device=device, attn_implementation=args.attn,
                                           kernels=args.kernels)
        proc = EagleProcessor.from_pretrained(path, config=model.config, kernels=args.kernels)
        images = [_image_path(i) for i in args.image]
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": args.question}]
        prompt = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        batch = proc(text=prompt, images=images, max_tiles=args.max_tiles).to(device)
    except (ImageError, ValueError, FileNotFoundError) as e:
        print(f"nemo-eagle chat: {e}", file=sys.stderr)
        return 2
    for plan in batch.plans:
        logging.getLogger("nemo_eagle.tiling").info("tiling plan: %s", plan.describe())
    gen = {"max_new_tokens": args.max_new_tokens or 256, "do_sample": args.temperature > 0,
               "temperature": args.temperature or 1.0, "top_p": args.top_p, "seed": args.seed}
    if sys.stdout.isatty() and not args.no_stream:
        pieces = []
        for piece in squeeze_blank_lines(model.stream(**batch, **gen)):
            pieces.append(piece)
            print(piece, end="", flush=True)
        answer = "".join(pieces)
        if answer:
            print()
    else:
        answer = "".join(squeeze_blank_lines([proc.decode(model.generate(**batch, **gen)[0])]))
        if answer:
            print(answer)
    if not answer:
        print("[nemo-eagle] the model produced no text (only special tokens or whitespace)", file=sys.stderr)
    if args.draw_boxes:
        from nemo_eagle.grounding import draw_boxes, parse_boxes

        if not images:
            print("nemo-eagle chat: --draw-boxes needs an --image", file=sys.stderr)
            return 2
        img = Image.open(images[0])
        boxes = parse_boxes(answer, img.width, img.height, convention=args.box_convention)
        draw_boxes(img, boxes, args.draw_boxes)
        print(f"[nemo-eagle] drew {len(boxes)} box(es) to {args.draw_boxes}", file=sys.stderr)
    return 0


def tiles_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nemo-eagle tiles", description="Print the Eagle2 tiling plan of an image.")
    p.add_argument("image", help="image file ('example' = the bundled chart)")
    p.add_argument("--min-tiles", type=int, default=1)
    p.add_argument("--max-tiles", type=int, default=12)
    p.add_argument("--tile-size", type=int, default=448)
    p.add_argument("--tokens-per-tile", type=int, default=256)
    p.add_argument("--no-thumbnail", action="store_true")
    p.add_argument("--max-image-tokens", type=int, default=None, help="shrink the tile count to fit this budget")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from nemo_eagle.data.images import ImageError, load_image
    from nemo_eagle.tiling import plan_tiles

    try:
        img = load_image(_image_path(args.image))
        plan = plan_tiles(int(img.shape[-1]), int(img.shape[-2]), min_tiles=args.min_tiles, max_tiles=args.max_tiles,
                          use_thumbnail=not args.no_thumbnail, tile_size=args.tile_size,
                          tokens_per_tile=args.tokens_per_tile, max_image_tokens=args.max_image_tokens)
    except (ImageError, ValueError) as e:
        print(f"nemo-eagle tiles: {e}", file=sys.stderr)
        return 2
    print(json.dumps(plan.to_dict()) if args.json else plan.describe())
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def create_tiny_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nemo-eagle create-tiny",
                                description="Write a tiny checkpoint with RANDOM weights in the official HF layout.")
    p.add_argument("out")
    p.add_argument("--llm", default="qwen2", choices=["qwen2", "llama", "nemotron"])
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--patch-size", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from nemo_eagle.convert.tiny import RANDOM_LABEL, create_tiny

    out = create_tiny(args.out, llm_family=args.llm, seed=args.seed, image_size=args.image_size,
                      patch_size=args.patch_size)
    print(f"wrote {out} ({RANDOM_LABEL})")
    return 0
