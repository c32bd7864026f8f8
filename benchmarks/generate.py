"""Generation throughput of the reference EagleModel (KV cache, batched decoding) at a released size.

Random weights in the shape of a preset (default Eagle2-1B), one image of ``--tiles`` tiles per prompt. Prints
prefill latency, decode tokens/s and end-to-end tokens/s per batch size, each batch size's throughput as a
ratio against batch size 1, and the end-to-end ratio against Hugging Face ``generate`` on the same weights
(vision tower + merge, then the transformers LM's own ``generate`` on the embeddings, prefill included), all
measured in the same run. Tokens are checked identical (greedy).

    python benchmarks/generate.py                          # GPU, Eagle2-1B shapes, batch 1 / 8 / 32
    python benchmarks/generate.py --preset eagle2-2b --batch-sizes 1,16
    python benchmarks/generate.py --device cpu --layers 2 --batch-sizes 1,2 --new-tokens 4 --tiles 1   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_eagle.config import get_preset
from nemo_eagle.modeling.eagle import EagleModel

IMAGE_TOKEN = 151667


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_batch(cfg, batch: int, tiles: int, text_tokens: int, device: str, dtype: torch.dtype) -> dict:
    g = torch.Generator().manual_seed(0)
    image = tiles * cfg.tokens_per_tile
    ids = torch.randint(0, 150000, (batch, text_tokens + image), generator=g)
    ids[:, 16:16 + image] = IMAGE_TOKEN
    s = cfg.vision.image_size
    pixels = torch.rand(batch * tiles, 3, s, s, generator=g) * 2 - 1
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device, dtype)}


def hf_generate(model, batch: dict, new_tokens: int, device: str) -> tuple[torch.Tensor, float]:
    """The baseline: our vision tower + merge, then transformers' ``generate`` (greedy, its DynamicCache)."""
    lm = model.language_model
    sync(device)
    t = time.perf_counter()
    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
    out = lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=new_tokens,
                      min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    sync(device)
    return out, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="eagle2-1b")
    ap.add_argument("--layers", type=int, default=None, help="keep this many LLM layers (fit / smoke runs)")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--tiles", type=int, default=7, help="tiles per image (7 = a 3x2 grid + thumbnail)")
    ap.add_argument("--text-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per path (best kept)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    cfg = get_preset(args.preset).replace(image_token_id=IMAGE_TOKEN)
    if args.layers:
        cfg = cfg.replace(llm={"num_hidden_layers": args.layers}, vision={"num_hidden_layers": min(args.layers, 27)})
    torch.manual_seed(0)
    model = EagleModel(cfg, dtype=dtype).to(args.device).eval()
    n_params = sum(p.numel() for p in model.parameters()) / 1e9
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"{args.preset} ({cfg.llm.num_hidden_layers} LLM layers, {n_params:.2f}B params, random weights), "
        f"{args.dtype}, "
        f"{name}; {args.tiles} tiles/prompt = {args.tiles * cfg.tokens_per_tile} image tokens + {args.text_tokens} text"
    )
    print(f"{'batch':>5} {'prefill ms':>11} {'decode tok/s':>13} {'e2e tok/s':>10} {'vs batch 1':>11} "
          f"{'HF e2e tok/s':>13} {'vs HF':>7} {'same ids':>9}")
    base = None
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        batch = make_batch(cfg, b, args.tiles, args.text_tokens, args.device, dtype)
        with torch.inference_mode():
            model(**batch)  # warm-up (kernels, allocator)
            sync(args.device)
            prefill = total = hf_total = float("inf")
            for _ in range(args.repeat):  # alternate ours and HF, keep each one's best: load drift hits both
                t = time.perf_counter()
                model.generate(**batch, max_new_tokens=1, eos_token_id=[], pad_token_id=0)  # prefill + first token
                sync(args.device)
                prefill = min(prefill, time.perf_counter() - t)
                t = time.perf_counter()
                out = model.generate(**batch, max_new_tokens=args.new_tokens, eos_token_id=[], pad_token_id=0)
                sync(args.device)
                total = min(total, time.perf_counter() - t)
                hf_out, hf_time = hf_generate(model, batch, args.new_tokens, args.device)
                hf_total = min(hf_total, hf_time)
        new = out.shape[0] * out.shape[1]
        decode_rate = out.shape[0] * (out.shape[1] - 1) / max(total - prefill, 1e-9)  # steps after the first
        e2e = new / total
        hf_e2e = hf_out.numel() / hf_total
        base = base or e2e
        same = hf_out.shape == out.shape and bool((hf_out == out).all())
        print(f"{b:>5} {prefill * 1e3:>11.1f} {decode_rate:>13.1f} {e2e:>10.1f} {e2e / base:>10.2f}x "
              f"{hf_e2e:>13.1f} {e2e / hf_e2e:>6.2f}x {same!s:>9}", flush=True)
        del batch, out
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
