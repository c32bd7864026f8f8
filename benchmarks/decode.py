"""Decode tokens/s of the serving engine's model runner against today's generation loop and Hugging Face
``generate`` with a static cache + ``torch.compile``, same weights, same run.

Random weights in the shape of each preset (default Eagle2-1B and Eagle2-2B), bf16, text prompts of
``--prompt-tokens``; decode rate = (tokens of steps 2..N) / (their time), so prefill is excluded. Three paths:
- ``loop``: ``modeling.generation.iter_tokens`` (eager, transformers' DynamicCache): what ``EagleModel.generate``
  and the static serving path run;
- ``engine``: ``serve.engine.runner.ModelRunner`` over the slot KV cache, one decode step per token with the
  host reading the sampled ids each step (as the scheduler does for streaming); on a GPU each batch-size bucket
  is one CUDA graph (``--no-graphs``: the dynamic eager step);
- ``hf``: ``language_model.generate(cache_implementation="static")``, compiled (``--no-compile``: eager).
Ratios are printed against ``loop`` at batch 1 of the same preset.

    python benchmarks/decode.py                                   # GPU: 1B and 2B shapes, batch 1/8/32/64
    python benchmarks/decode.py --device cpu --layers 1 --batch-sizes 1,2 --new-tokens 8 --no-compile  # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import from the repository root

from nemo_eagle.config import get_preset  # noqa: E402 - after the repository root is on the path
from nemo_eagle.modeling.eagle import EagleModel  # noqa: E402
from nemo_eagle.modeling.generation import GenerationConfig, iter_tokens  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def loop_rate(model, ids, n: int, device: str) -> float:
    cfg = GenerationConfig(max_new_tokens=n, eos_token_id=[], pad_token_id=0)
    mask = torch.ones_like(ids)
    steps = iter_tokens(model, ids, mask, None, cfg)
    next(steps)  # prefill + first token
    sync(device)
    t = time.perf_counter()
    count = sum(1 for _ in steps)
    sync(device)
    return ids.shape[0] * count / (time.perf_counter() - t)


def engine_rate(model, ids, n: int, device: str, graphs: bool) -> float:
    from nemo_eagle.serve.engine.runner import ModelRunner

    b, length = ids.shape
    runner = ModelRunner.build(model, max_len=length + n + 1, memory_bytes=None, max_num_seqs=b, graphs=graphs)
    slots = [runner.cache.allocate() for _ in range(b)]
    first = []
    for r, slot in enumerate(slots):
        embeds = runner.embed(ids[r:r + 1], None)
        first.append(int(runner.logits(runner.prefill(slot, embeds, 0)[None])[0].argmax()))
    tokens, lengths = torch.tensor(first), torch.full((b,), length)
    runner.decode(slots, tokens, lengths).argmax(-1).tolist()  # capture / warm-up on a scratch position
    sync(device)
    t = time.perf_counter()
    for _ in range(n - 1):
        nxt = runner.decode(slots, tokens, lengths).argmax(-1).tolist()  # the host reads ids every step
        tokens, lengths = torch.tensor(nxt), lengths + 1
    sync(device)
    rate = b * (n - 1) / (time.perf_counter() - t)
    del runner
    return rate


def hf_rate(model, ids, n: int, device: str, compile_: bool) -> float:
    lm = model.language_model
    embeds = lm.get_input_embeddings()(ids)
    mask = torch.ones_like(ids)
    kw = {"inputs_embeds": embeds, "attention_mask": mask, "do_sample": False, "pad_token_id": 0,
          "eos_token_id": None, "cache_implementation": "static"}
    if not compile_:
        kw["disable_compile"] = True

    def timed(tokens: int) -> float:
        sync(device)
        t = time.perf_counter()
        lm.generate(max_new_tokens=tokens, min_new_tokens=tokens, **kw)
        sync(device)
        return time.perf_counter() - t

    timed(n)  # compile / warm-up
    one, full = timed(1), timed(n)
    return ids.shape[0] * (n - 1) / max(full - one, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="eagle2-1b,eagle2-2b")
    ap.add_argument("--layers", type=int, default=None, help="keep this many LLM layers (smoke runs)")
    ap.add_argument("--batch-sizes", default="1,8,32,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    graphs = not args.no_graphs and args.device.startswith("cuda")
    print(f"{name}, {args.dtype}, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens; engine decode "
          f"{'CUDA graphs' if graphs else 'eager'}, HF static cache {'compiled' if not args.no_compile else 'eager'}")
    for preset in args.presets.split(","):
        cfg = get_preset(preset).replace(image_token_id=151667)
        if args.layers:
            cfg = cfg.replace(llm={"num_hidden_layers": args.layers}, vision={"num_hidden_layers": 1})
        torch.manual_seed(0)
        model = EagleModel(cfg, dtype=dtype).to(args.device).eval()
        print(f"{preset} ({cfg.llm.num_hidden_layers} LLM layers, random weights)")
        print(f"{'batch':>5} {'loop tok/s':>11} {'engine tok/s':>13} {'HF static tok/s':>16} "
              f"{'engine/loop':>12} {'engine/HF':>10} {'engine vs loop@1':>17}")
        base = None
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            ids = torch.randint(0, 150000, (b, args.prompt_tokens), generator=torch.Generator().manual_seed(b))
            ids = ids.to(args.device)
            with torch.inference_mode():
                loop = loop_rate(model, ids, args.new_tokens, args.device)
                eng = engine_rate(model, ids, args.new_tokens, args.device, graphs)
            with torch.no_grad():
                try:
                    hf = hf_rate(model, ids, args.new_tokens, args.device, not args.no_compile)
                except Exception as e:  # noqa: BLE001 - report and keep the other columns
                    print(f"  HF static-cache generate failed at batch {b}: {type(e).__name__}: {e}")
                    hf = float("nan")
            base = base or loop
            print(f"{b:>5} {loop:>11.1f} {eng:>13.1f} {hf:>16.1f} {eng / loop:>11.2f}x {eng / hf:>9.2f}x "
                  f"{eng / base:>16.2f}x", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
