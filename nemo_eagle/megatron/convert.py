"""HF checkpoint directory <-> megatron distributed checkpoint, with an optional logit check against the reference.

``convert(src, dst, to_format="megatron", tp=2)`` writes a checkpoint that any TP/PP layout can load;
``to_format="hf"`` writes config.json, the tokenizer files and model.safetensors in the official layout.
Standalone: ``python -m nemo_eagle.megatron.convert --from SRC --to DST --format megatron --tp 2 --verify``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nemo_eagle.config import EagleConfig, load_model_config
from nemo_eagle.megatron import checkpoint, parallel
from nemo_eagle.megatron.config import MegatronOptions

log = logging.getLogger(__name__)
FORMATS = ("megatron", "hf")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def hf_config(src: Path, hf) -> EagleConfig:
    """The checkpoint's config with the tie flag taken from the tensors and the image token id resolved."""
    cfg = load_model_config(src)
    tied = "language_model.lm_head.weight" not in hf
    if tied != cfg.llm.tie_word_embeddings:
        cfg = cfg.replace(llm={"tie_word_embeddings": tied})
    from nemo_eagle.convert.hf import config_for_tensors

    cfg = config_for_tensors(cfg, hf)  # Eagle2-9B: tower order and ConvNeXt head size, from the tensor names
    if cfg.image_token_id is None and (src / "tokenizer.json").exists():
        from nemo_eagle.data.tokenizer import EagleTokenizer

        cfg.image_token_id = EagleTokenizer.from_file(src / "tokenizer.json").image_token_id
    return cfg


def _checkpoint_dtype(hf) -> str:
    for key in hf:
        t = hf[key]
        if t.is_floating_point():
            if t.dtype not in _DTYPE_NAMES:
                raise ValueError(f"unsupported checkpoint dtype {t.dtype}")
            return _DTYPE_NAMES[t.dtype]
    raise ValueError("checkpoint holds no floating-point tensors")


def _run(fn: Callable[..., Any], world: int, *args: Any) -> Any:
    """Run ``fn`` on ``world`` ranks: in place under torchrun / an existing group, spawned otherwise."""
    if dist.is_initialized():
        if dist.get_world_size() != world:
            raise RuntimeError(f"running inside a world of {dist.get_world_size()} ranks but tp*pp = {world}")
        return fn(*args)
    if world == 1:
        try:
            return fn(*args)
        finally:
            parallel.shutdown()
    parallel.require_device()  # fail here with one line, not in every spawned rank
    return parallel.launch(fn, world, *args)[0]


def _to_megatron_rank(src: str, dst: str, cfg_dict: dict, opts: MegatronOptions) -> int:
    from megatron.core import parallel_state

    from nemo_eagle.megatron import bridge
    from nemo_eagle.megatron.model import build_model

    cfg = EagleConfig.from_dict(cfg_dict)
    parallel.initialize(opts.tensor_parallel, opts.pipeline_parallel, seed=opts.seed)
    model = build_model(cfg, opts)
    hf = bridge.HFWeights(src)
    offset = _layer_offset(model)
    names = {bridge.canonical_name(k, offset) for k in model.state_dict() if not k.endswith("_extra_state")}
    if model.share_embeddings_and_output_weights:
        names.add(bridge.EMBED)
    full = bridge.hf_to_megatron(hf, cfg, model.padded_vocab_size, names=names)
    state = bridge.stage_state_dict(model, full, parallel_state.get_tensor_model_parallel_rank(), opts.tensor_parallel)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("_extra_state")]:
        raise RuntimeError(f"bridge/model mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    checkpoint.save(model, dst, extra_files_from=src, meta={"source": str(src)})
    return len(state)


def _layer_offset(model) -> int:
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    return get_transformer_layer_offset(model.language_model.config)


def load_megatron(path: str | Path, opts: MegatronOptions | None = None):
    """Build a TP=1/PP=1 (or ``opts``) model for this process and load a megatron checkpoint into it."""
    from nemo_eagle.megatron.model import build_model

    meta = checkpoint.read_meta(path)
    cfg = checkpoint.read_config(path)
    opts = opts or MegatronOptions(dtype=meta["dtype"])
    opts = opts.replace(padded_vocab_size=meta["padded_vocab_size"], perform_initialization=False)
    parallel.initialize(opts.tensor_parallel, opts.pipeline_parallel, seed=opts.seed)
    model = build_model(cfg, opts)
    checkpoint.load(model, path)
    return model.eval()


def megatron_state_to_hf(model) -> dict[str, torch.Tensor]:
    """A whole (TP=1, PP=1) model's tensors under official HF names."""
    from nemo_eagle.megatron import bridge

    full = {bridge.canonical_name(k, 0): v.detach() for k, v in model.state_dict().items()
            if not k.endswith("_extra_state")}
    if model.share_embeddings_and_output_weights:
        full.pop(bridge.OUTPUT, None)
    return bridge.megatron_to_hf(full, model.eagle_config)


def _to_hf_rank(src: str, dst: str) -> int:
    from nemo_eagle.convert import hf as hf_io

    model = load_megatron(src)
    tensors = megatron_state_to_hf(model)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    hf_io.write_safetensors({k: v.contiguous() for k, v in tensors.items()}, out)
    shutil.copyfile(Path(src) / "config.json", out / "config.json")
    checkpoint.copy_processor_files(src, out)
    return len(tensors)


# ----------------------------------------------------------------------------------------------- verify
def sample_batch(hf_dir: Path, cfg: EagleConfig) -> dict[str, torch.Tensor]:
    """One prompt with one synthetic 2:1 image (2 tiles + thumbnail), through the checkpoint's own processor."""
    from nemo_eagle.data.processor import EagleProcessor

    proc = EagleProcessor.from_pretrained(hf_dir)
    s = cfg.tiling.tile_size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, 2 * s), indexing="ij")
    image = (torch.stack([xx, yy, (xx * yy).sqrt()]) * 255).round().to(torch.uint8)  # (3, S, 2S) gradient
    prompt = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}], add_generation_prompt=True)
    batch = proc(text=prompt, images=[image], return_tensors="pt")
    return {"input_ids": batch["input_ids"], "pixel_values": batch["pixel_values"]}


def _verify_rank(megatron_dir: str, hf_dir: str) -> float:
    from nemo_eagle.modeling.eagle import EagleModel

    model = load_megatron(megatron_dir, MegatronOptions(dtype="float32"))
    ref = EagleModel.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    batch = sample_batch(Path(hf_dir), ref.config)
    with torch.no_grad():
        want = ref(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        got = model.gather_logits(model(batch["input_ids"], batch["pixel_values"].to(torch.float32)))
    diff = float((got.float() - want.float()).abs().max())
    log.info("verify: max |logit difference| megatron vs reference = %.3g over %d tokens", diff,
             batch["input_ids"].shape[1])
    return diff


# ----------------------------------------------------------------------------------------------- entry points
def convert(src: str, dst: str, *, to_format: str, tp: int = 1, pp: int = 1, verify: bool = False) -> dict:
    """Convert ``src`` to ``to_format`` ("megatron": from an HF dir; "hf": from a megatron dir) at ``dst``.

    Returns a summary dict (and ``max_logit_diff`` when ``verify``)."""
    if to_format not in FORMATS:
        raise ValueError(f"to_format must be one of {FORMATS}, got {to_format!r}")
    src_p, dst_p = Path(src), Path(dst)
    if to_format == "megatron" and not src_p.exists():
        from nemo_eagle.hub import resolve_checkpoint

        src_p = resolve_checkpoint(src)  # a hub id such as nvidia/Eagle2-2B
    if not src_p.is_dir():
        raise FileNotFoundError(f"source {src} is not a directory")
    if dst_p.exists() and any(dst_p.iterdir()) and dst_p.resolve() != src_p.resolve():
        log.warning("destination %s is not empty; files will be overwritten", dst)
    started = time.perf_counter()
    summary: dict[str, Any] = {"src": str(src_p), "dst": str(dst_p), "format": to_format}
    if to_format == "megatron":
        from nemo_eagle.megatron.bridge import HFWeights

        if checkpoint.is_megatron_checkpoint(src_p):
            raise ValueError(f"{src} is already a megatron checkpoint; use to_format='hf' to go back")
        hf = HFWeights(src_p)
        cfg = hf_config(src_p, hf)
        opts = MegatronOptions(tensor_parallel=tp, pipeline_parallel=pp, dtype=_checkpoint_dtype(hf),
                               perform_initialization=False, use_cpu_initialization=True)
        log.info("HF -> megatron: %s -> %s (tp=%d, pp=%d, %s)", src, dst, tp, pp, opts.dtype)
        summary["num_tensors"] = _run(_to_megatron_rank, tp * pp, str(src_p), str(dst_p), cfg.to_dict(), opts)
        summary.update(tensor_parallel=tp, pipeline_parallel=pp, dtype=opts.dtype)
        hf_dir, megatron_dir = src_p, dst_p
    else:
        if tp != 1 or pp != 1:
            log.info("megatron -> HF reads the checkpoint whole; tp/pp are ignored")
        meta = checkpoint.read_meta(src_p)
        log.info("megatron -> HF: %s -> %s (saved with %s)", src, dst, meta["saved_with"])
        summary["num_tensors"] = _run(_to_hf_rank, 1, str(src_p), str(dst_p))
        summary["dtype"] = meta["dtype"]
        hf_dir, megatron_dir = dst_p, src_p
    if verify:
        summary["max_logit_diff"] = _run(_verify_rank, 1, str(megatron_dir), str(hf_dir))
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nemo_eagle.megatron.convert", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="src", required=True,
                   help="source: HF checkpoint directory or hub id, or a megatron checkpoint directory")
    p.add_argument("--to", dest="dst", required=True, help="destination directory")
    p.add_argument("--format", dest="to_format", required=True, choices=FORMATS, help="format to write")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size to save with (the checkpoint reshards)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to save with")
    p.add_argument("--verify", action="store_true", help="run both models on a sample; print the max logit difference")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = convert(args.src, args.dst, to_format=args.to_format, tp=args.tp, pp=args.pp, verify=args.verify)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    if args.verify:
        print(f"max logit difference: {summary['max_logit_diff']:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
