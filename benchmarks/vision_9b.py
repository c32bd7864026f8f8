"""Eagle2-9B image encoder (SigLIP-448 + ConvNeXt-XXLarge-512 mixture + projector) forward time and memory.

At the released sizes in bf16 on a GPU, random weights: for 1, 7 and 13 tiles (one tile, a typical image, a full
12-tile grid + thumbnail) it prints the forward time, tiles/s and peak memory of the 9B tower, and the same for
the SigLIP-only tower of Eagle2-1B/2B built in the same process (the baseline), as a ratio. ``--tiny`` runs the
same logic on CPU at tiny sizes (a check of the script, not a measurement).

    python benchmarks/vision_9b.py                 # a GPU, about a minute
    python benchmarks/vision_9b.py --tiny          # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_eagle.config import EagleConfig, ProjectorConfig, VisionConfig, get_preset
from nemo_eagle.modeling.projector import Projector
from nemo_eagle.modeling.vision import VisionEncoder


class Encoder(torch.nn.Module):
    """The exported image encoder: vision tower then projector, as ``EagleModel.get_image_features``."""

    def __init__(self, cfg: EagleConfig, attn: str):
        super().__init__()
        self.vision = VisionEncoder(cfg.vision, attn, cfg.projector.shuffle_factor)
        self.projector = Projector(cfg.vision.output_channels, cfg.llm.hidden_size, cfg.projector,
                                   extra_channels=cfg.vision.convnext_channels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))


def tiny_configs() -> tuple[EagleConfig, EagleConfig]:
    nine = get_preset("eagle2-9b")
    vision = VisionConfig(model_type=nine.vision.model_type, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14,
                          convnext={**nine.vision.convnext, "image_size": 64, "depths": [1, 1, 1, 1],
                                    "hidden_sizes": [8, 8, 16, 16], "num_classes": 8})
    llm = nine.llm.__class__(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64, vocab_size=64)
    tiny_nine = EagleConfig(vision=vision, llm=llm, projector=ProjectorConfig())
    siglip = EagleConfig(vision=VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, image_size=56, patch_size=14), llm=llm)
    return tiny_nine, siglip


def time_forward(model: torch.nn.Module, tiles: int, size: int, device: torch.device, dtype: torch.dtype,
                 iters: int) -> dict:
    x = torch.rand(tiles, 3, size, size, device=device, dtype=dtype) * 2 - 1
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(2):  # warm-up (cuDNN / kernel selection)
            out = model(x)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        for _ in range(iters):
            out = model(x)
        if cuda:
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / iters
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else float("nan")
    return {"tiles": tiles, "ms": dt * 1e3, "tiles_per_s": tiles / dt, "peak_activation_gib": peak,
            "out_shape": list(out.shape), "finite": bool(torch.isfinite(out.float()).all())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes on CPU: checks the script's logic only")
    p.add_argument("--tiles", default="1,7,13")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        nine, siglip = tiny_configs()
        iters = min(args.iters, 2)
    else:
        if not torch.cuda.is_available():
            print("vision_9b: needs a CUDA GPU at the released sizes; run with --tiny for a CPU check", file=sys.stderr)
            return 2
        device, dtype = torch.device("cuda"), torch.bfloat16
        nine, siglip = get_preset("eagle2-9b"), get_preset("eagle2-2b")
        iters = args.iters
        torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                     "dtype": str(dtype).removeprefix("torch."), "tiny": args.tiny, "runs": []}
    models = {}
    for name, cfg in (("9b_tower", nine), ("siglip_tower", siglip)):
        torch.manual_seed(0)
        with torch.device(device):
            m = Encoder(cfg, args.attn).to(dtype).eval()
        params = sum(t.numel() for t in m.parameters())
        weights = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        models[name] = m
        print(f"{name}: {params / 1e6:.1f}M parameters, weights {weights:.2f} GiB allocated so far", flush=True)
    eps = {mod.eps for mod in models["9b_tower"].vision.convnext.model.modules() if isinstance(mod, torch.nn.LayerNorm)
           and mod is not models["9b_tower"].vision.convnext.model.layernorm}
    assert eps == {1e-5}, f"ConvNeXt LayerNorm eps {eps}"
    size = nine.vision.image_size
    for tiles in [int(t) for t in args.tiles.split(",")]:
        r9 = time_forward(models["9b_tower"], tiles, size, device, dtype, iters)
        rs = time_forward(models["siglip_tower"], tiles, siglip.vision.image_size, device, dtype, iters)
        assert r9["out_shape"] == [tiles, nine.tokens_per_tile, nine.llm.hidden_size] and r9["finite"], r9
        ratio = r9["ms"] / rs["ms"]
        print(f"9B tower, {results['dtype']}, {tiles:2d} tile(s): {r9['ms']:8.2f} ms/forward, "
              f"{r9['tiles_per_s']:8.1f} tiles/s, peak activations {r9['peak_activation_gib']:.2f} GiB | "
              f"SigLIP-only tower (baseline, same run): {rs['ms']:8.2f} ms -> 9B/baseline time {ratio:.2f}x",
              flush=True)
        results["runs"].append({"nine": r9, "siglip": rs, "ratio": ratio})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
