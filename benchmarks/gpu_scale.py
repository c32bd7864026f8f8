"""Megatron EAGLE2 on one GPU: logit parity with the reference, then training throughput in BF16 and FP8.

1. Parity: the tiny checkpoint (the NVIDIA fixture when present, else a fresh tiny random one) through the
   megatron model with Transformer Engine layers, against ``EagleModel`` on the same GPU (fp32, TF32 off) and,
   for the fixture, NVIDIA's stored logits; then the same in bf16 with a bf16 tolerance.
2. Throughput: an Eagle2-2B-sized and an Eagle2-9B-sized model (Qwen2.5-1.5B / -7B decoder dims; the 9B keeps
   6 of 28 layers and a SigLIP-only tower so it fits 80 GB with Adam), random weights, megatron schedules +
   distributed optimizer, BF16 then FP8 (TE delayed scaling; the vision tower stays bf16). Prints tokens/s,
   model TFLOP/s, MFU against the card's dense BF16 peak, the fraction of a bf16 matmul measured here, and
   FP8/BF16 speed-up measured in this run.

    python benchmarks/gpu_scale.py                 # about 2-3 minutes on an H100
    python benchmarks/gpu_scale.py --steps 4 --only 2b
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_eagle.config import EagleConfig, VisionConfig, get_preset

warnings.filterwarnings("ignore")
# Dense BF16 tensor-core peaks (no sparsity), TFLOP/s, by device-name substring.
PEAK_BF16 = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0}
IMAGE_TOKEN = 151667


def te_available() -> bool:
    """Transformer Engine importable (it raises RuntimeError, not ImportError, when half-installed)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


IMPL = "transformer_engine" if te_available() else "local"


def peak_bf16(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measured_matmul_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12


# ----------------------------------------------------------------------------------------------- FLOPs
def train_flops(cfg: EagleConfig, seq_len: int, tiles: int) -> float:
    """Model FLOPs of one training sample (forward + backward = 3x forward), attention counted in full as
    Megatron-LM does."""
    v, llm = cfg.vision, cfg.llm
    p, c = v.grid_size**2, v.hidden_size
    vision = tiles * (2 * p * 3 * v.patch_size**2 * c
                      + v.num_hidden_layers * p * (2 * (4 * c * c + 2 * c * v.intermediate_size) + 4 * p * c))
    h, d, q, kv = llm.hidden_size, llm.head_dim, llm.num_attention_heads, llm.num_key_value_heads
    out_tokens = tiles * cfg.tokens_per_tile
    projector = out_tokens * 2 * (cfg.projector_in_features * h + h * h)
    per_layer = 2 * (h * (q + 2 * kv) * d + q * d * h + 3 * h * llm.intermediate_size) + 4 * seq_len * q * d
    decoder = seq_len * (llm.num_hidden_layers * per_layer + 2 * h * llm.vocab_size)
    return 3.0 * (vision + projector + decoder)


# ----------------------------------------------------------------------------------------------- parity
def parity(fixtures: Path | None) -> dict:
    from nemo_eagle import EagleModel
    from nemo_eagle.megatron import bridge, parallel
    from nemo_eagle.megatron.config import MegatronOptions
    from nemo_eagle.megatron.convert import hf_config, sample_batch
    from nemo_eagle.megatron.model import build_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tmp = None
    if fixtures is not None and (fixtures / "tiny-eagle2").is_dir():
        ckpt = fixtures / "tiny-eagle2"
    else:
        from nemo_eagle.convert.tiny import create_tiny

        tmp = tempfile.TemporaryDirectory()
        ckpt = create_tiny(Path(tmp.name) / "tiny")
    ref = EagleModel.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="eager", device="cuda")
    batch = {k: v.cuda() for k, v in sample_batch(ckpt, ref.config).items()}
    out = {
        "checkpoint": "fixture tiny-eagle2" if tmp is None else "fresh tiny random",
        "tokens": batch["input_ids"].shape[1],
    }
    with torch.no_grad():
        want = ref(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits.float()
    hf = bridge.HFWeights(ckpt)
    cfg = hf_config(ckpt, hf)
    # fp32: absolute 1e-3; bf16: 3% of the largest logit
    for dtype, tol in (("float32", 1e-3), ("bfloat16", 0.03)):
        parallel.initialize(1, 1)
        model = build_model(cfg, MegatronOptions(dtype=dtype, impl=IMPL))
        full = bridge.hf_to_megatron(hf, cfg, model.padded_vocab_size)
        model.load_state_dict(
            {k: v.cuda() for k, v in bridge.stage_state_dict(model, full, 0, 1).items()}, strict=False
        )
        model.eval()
        with torch.no_grad():
            got = model.gather_logits(model(batch["input_ids"], batch["pixel_values"].to(model.options.torch_dtype)))
        diff = float((got.float() - want).abs().max())
        out[f"{IMPL}_{dtype}_max_diff"] = diff
        out[f"{IMPL}_{dtype}_ok"] = diff < tol * (1.0 if dtype == "float32" else float(want.abs().max()))
        if tmp is None and dtype == "float32":
            out.update(_fixture_check(model, fixtures))
        del model
    if tmp is not None:
        tmp.cleanup()
    return out


def _fixture_check(model, fixtures: Path) -> dict:
    import numpy as np

    d = np.load(fixtures / "expected" / "portrait_300x900.npz")
    ids = torch.from_numpy(d["input_ids"]).cuda()
    pixels = ((torch.from_numpy(d["tiles_uint8"]).float() - 127.5) / 127.5).cuda()
    with torch.no_grad():
        logits = model.gather_logits(model(ids, pixels))[:, torch.from_numpy(d["logits_positions"]).cuda()]
    diff = float((logits.float().cpu() - torch.from_numpy(d["logits"])).abs().max())
    return {"te_float32_vs_nvidia_fixture_max_diff": diff, "te_float32_vs_nvidia_fixture_ok": diff < 1e-3}


# ----------------------------------------------------------------------------------------------- throughput
def sized_config(name: str, layers: int | None) -> EagleConfig:
    base = get_preset("eagle2-2b" if name == "2b" else "eagle2-9b")
    cfg = base.replace(vision=VisionConfig(), image_token_id=IMAGE_TOKEN)  # SigLIP so400m tower
    if layers:
        cfg = cfg.replace(llm={"num_hidden_layers": layers})
    return cfg


def microbatches(cfg: EagleConfig, seq_len: int, tiles: int, n: int) -> list[dict]:
    from nemo_eagle.megatron.train import make_microbatch

    s = cfg.vision.image_size
    image_tokens = tiles * cfg.tokens_per_tile
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(0, 151000, (1, seq_len), generator=g)
        ids[0, 16:16 + image_tokens] = IMAGE_TOKEN
        out.append(make_microbatch(ids, torch.randn(tiles, 3, s, s, generator=g).clamp(-1, 1).to(torch.bfloat16)))
    return out


def throughput(cfg: EagleConfig, label: str, fp8: bool, seq_len: int, tiles: int, steps: int, warmup: int,
               num_micro: int, recompute: str | None = None) -> dict:
    from nemo_eagle.megatron import parallel
    from nemo_eagle.megatron.config import MegatronOptions, count_parameters
    from nemo_eagle.megatron.model import build_model
    from nemo_eagle.megatron.train import OptimConfig, Trainer

    opts = MegatronOptions(dtype="bfloat16", impl=IMPL, fp8="hybrid" if fp8 else None,
                           fp8_recipe="delayed", recompute=recompute)
    parallel.initialize(1, 1)
    model = build_model(cfg, opts)
    trainer = Trainer(model, OptimConfig(lr=1e-5))
    mbs = microbatches(cfg, seq_len, tiles, num_micro)
    for _ in range(warmup):
        trainer.train_step(mbs)
    torch.cuda.synchronize()
    t = time.perf_counter()
    losses = [trainer.train_step(mbs)["loss"] for _ in range(steps)]
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    flops = num_micro * train_flops(cfg, seq_len, tiles)
    result = {"model": label, "params_b": count_parameters(cfg) / 1e9, "precision": "fp8" if fp8 else "bf16",
              "seq_len": seq_len, "tiles": tiles, "micro_batches": num_micro, "recompute": recompute, "step_s": dt,
              "tokens_per_s": num_micro * seq_len / dt, "tiles_per_s": num_micro * tiles / dt,
              "tflops": flops / dt / 1e12, "loss_finite": all(math.isfinite(x) and abs(x) < 1e4 for x in losses),
              "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    # drop the DDP <-> config references so this model's memory is freed before the next one is built
    model.config.no_sync_func = model.config.finalize_model_grads_func = None
    del trainer, model
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result["mem_after_free_gb"] = torch.cuda.memory_allocated() / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures", type=Path, default=Path(os.environ.get(
        "NEMO_EAGLE_FIXTURES", Path(__file__).resolve().parents[1] / "tests" / "fixtures")))
    ap.add_argument("--only", choices=["2b", "9b"], help="one model size")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--micro-batches", type=int, default=2, help="micro-batches (of 1 sample) per step")
    ap.add_argument("--layers-9b", type=int, default=6, help="decoder layers kept for the 9B-sized model")
    ap.add_argument("--recompute", choices=["selective", "full"], help="activation recompute for every run")
    ap.add_argument("--skip-parity", action="store_true")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_scale.py needs a CUDA GPU", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    started = time.perf_counter()
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    matmul = measured_matmul_tflops()
    print(
        f"device: {name}; dense bf16 peak {peak or 'unknown'} TFLOP/s; measured 8192^3 bf16 matmul {matmul:.0f} TFLOP/s"
    )
    print(
        f"layer specs: {IMPL}"
        + ("" if IMPL == "transformer_engine" else " (transformer_engine not importable: FP8 runs skipped)")
    )
    failed = False
    if not args.skip_parity:
        p = parity(args.fixtures if args.fixtures.is_dir() else None)
        print("parity:", json.dumps(p))
        failed = not all(v for k, v in p.items() if k.endswith("_ok"))
    runs = [
        ("2b", "Eagle2-2B-sized (28 layers)", None, 4096, 6),
        ("9b", f"Eagle2-9B-sized ({args.layers_9b}/28 layers)", args.layers_9b, 2048, 4),
    ]
    rows = []
    for key, label, layers, seq_len, tiles in runs:
        if args.only and key != args.only:
            continue
        cfg = sized_config(key, layers)
        for fp8 in ((False, True) if IMPL == "transformer_engine" else (False,)):
            r = throughput(cfg, label, fp8, seq_len, tiles, args.steps, args.warmup, args.micro_batches, args.recompute)
            r["mfu"] = r["tflops"] / peak if peak else None
            r["of_measured_matmul"] = r["tflops"] / matmul
            rows.append(r)
            print(f"{label:<30} {r['precision']:>4}: {r['tokens_per_s']:>9.0f} tokens/s  {r['tflops']:>6.1f} TFLOP/s  "
                  f"MFU {r['mfu'] if r['mfu'] is None else format(r['mfu'], '.1%')}  "
                  f"({r['of_measured_matmul']:.1%} of measured matmul)  step {r['step_s'] * 1e3:.0f} ms  "
                  f"peak mem {r['peak_mem_gb']:.1f} GB  finite loss {r['loss_finite']}", flush=True)
            failed |= not r["loss_finite"]
        if IMPL == "transformer_engine":
            bf16, fp8 = rows[-2], rows[-1]
            print(f"{label:<30} FP8 / BF16 speed-up (same run): {fp8['tokens_per_s'] / bf16['tokens_per_s']:.2f}x")
    from nemo_eagle.megatron import parallel

    parallel.shutdown()
    print(json.dumps({"device": name, "rows": rows, "seconds": round(time.perf_counter() - started, 1)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
