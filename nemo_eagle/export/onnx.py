"""Deployment export: the image encoder (vision tower + projector) to ONNX, the LLM as a plain HF directory.

``pixel_values (T, 3, S, S) -> image_embeds (T, tokens_per_tile, H)`` is exported with torch's ``torch.export``
based ONNX exporter (dynamic tile axis) and checked in onnxruntime against the torch reference path; TensorRT
builds an engine from that file. The LLM directory is ``save_pretrained`` of the transformers causal LM plus the
checkpoint's tokenizer files, which is what vLLM and TensorRT-LLM's HF checkpoint converters read.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
# Tokenizer files an HF text checkpoint carries; copied verbatim when the source checkpoint has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json")
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
_EXTERNAL_DATA_BYTES = 1 << 30  # protobuf caps a file at 2 GiB: larger weights go to FILE.onnx.data


class ImageEncoder(nn.Module):
    """The exported graph: ``model.vision`` then ``model.projector`` (reference ops only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision = model.vision
        self.projector = model.projector

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values (T, 3, S, S) -> image_embeds (T, tokens_per_tile, H)."""
        return self.projector(self.vision(pixel_values))


@dataclass(frozen=True)
class Verification:
    max_abs_diff: float
    tolerance: float
    tiles: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"onnxruntime vs torch on {'/'.join(map(str, self.tiles))} tile(s): max abs diff "
                f"{self.max_abs_diff:.3e} (tolerance {self.tolerance:.0e}) {verdict}")


def _bind_reference_ops(model: nn.Module) -> None:
    """ONNX holds standard ops only: make sure no Triton kernel is bound to the projector."""
    from nemo_eagle.ops import KernelConfig, use_kernels

    use_kernels(model, KernelConfig(backend="torch"))


def export_image_encoder(
    model: nn.Module, out: str | Path, *, opset: int = DEFAULT_OPSET, example_tiles: int = 2
) -> Path:
    """Write ``out`` (ONNX): input ``pixel_values`` (tiles, 3, S, S), output ``image_embeds``; tiles is dynamic."""
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: LayerNorm needs opset >= 17")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"output file must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _bind_reference_ops(model)
    encoder = ImageEncoder(model).eval()
    size = model.config.vision.image_size
    param = next(encoder.parameters())
    example = torch.zeros(example_tiles, 3, size, size, dtype=param.dtype, device=param.device)
    nbytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    tiles = torch.export.Dim("tiles", min=1, max=1024)
    t0 = time.perf_counter()
    log.info("exporting vision tower + projector (%.1f MB of weights, %s) to %s, opset %d",
             nbytes / 1e6, param.dtype, out, opset)
    with torch.no_grad():
        torch.onnx.export(
            encoder, (example,), str(out), dynamo=True, opset_version=opset,
            input_names=["pixel_values"], output_names=["image_embeds"],
            dynamic_shapes=({0: tiles},), external_data=nbytes > _EXTERNAL_DATA_BYTES, verbose=False,
        )
    log.info("wrote %s in %.1fs", out, time.perf_counter() - t0)
    return out


def verify_image_encoder(model: nn.Module, onnx_path: str | Path, *, tiles: tuple[int, ...] = (1, 3),
                         seed: int = 0) -> Verification:
    """Run ``onnx_path`` in onnxruntime (CPU) and the torch reference on the same random tiles."""
    import onnxruntime as ort

    _bind_reference_ops(model)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    param = next(model.vision.parameters())
    size = model.config.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for n in tiles:
        pixels = torch.rand(n, 3, size, size, generator=gen) * 2 - 1  # the normalised range [-1, 1]
        pixels = pixels.to(param.dtype)
        with torch.no_grad():
            want = model.get_image_features(pixels.to(param.device)).float().cpu()
        got = session.run(["image_embeds"], {"pixel_values": _to_numpy(pixels)})[0]
        got = torch.from_numpy(got.astype("float32"))
        if got.shape != want.shape:
            raise RuntimeError(f"ONNX output shape {tuple(got.shape)} != torch {tuple(want.shape)} for {n} tiles")
        worst = max(worst, (got - want).abs().max().item())
    return Verification(worst, TOLERANCE.get(param.dtype, 1e-4), tuple(tiles))


def _to_numpy(t: Tensor):
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; ONNX Runtime takes it as ml_dtypes
        import ml_dtypes

        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def export_llm_dir(model: nn.Module, source_dir: str | Path | None, out_dir: str | Path) -> Path:
    """Write the LLM alone as an HF causal-LM directory: weights, config, tokenizer and generation config."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model.language_model.save_pretrained(out_dir, safe_serialization=True)
    copied = []
    if source_dir is not None:
        source_dir = Path(source_dir)
        for name in TOKENIZER_FILES:
            if (source_dir / name).exists():
                shutil.copyfile(source_dir / name, out_dir / name)
                copied.append(name)
        _strip_remote_code(out_dir / "tokenizer_config.json")
        template = source_dir / "chat_template.json"
        if template.exists():
            # The checkpoint's prompt format lives in the processor's template, not the tokenizer's own one.
            (out_dir / "chat_template.jinja").write_text(json.loads(template.read_text())["chat_template"])
            copied.append("chat_template.jinja")
    if "tokenizer.json" not in copied:
        log.warning("no tokenizer files found next to the checkpoint; %s holds weights and config only", out_dir)
    log.info("wrote the LLM (%s) to %s in %.1fs with %s", type(model.language_model).__name__, out_dir,
             time.perf_counter() - t0, ", ".join(copied) or "no tokenizer files")
    return out_dir


def _strip_remote_code(path: Path) -> None:
    """Drop ``auto_map`` and the tokenizer's own chat template so tools load it without trust_remote_code."""
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    removed = [k for k in ("auto_map", "chat_template") if cfg.pop(k, None) is not None]
    if removed:
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        log.info("tokenizer_config.json: removed %s", removed)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="nemo-eagle export-onnx",
        description="Export the image encoder (vision tower + projector) to ONNX, and optionally the LLM as an HF "
                    "directory for vLLM / TensorRT-LLM.",
    )
    p.add_argument("--model", required=True, help="HF checkpoint directory, .nemo file or hub id")
    p.add_argument("--out", default=None, help="ONNX file to write (FILE.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET}, minimum 17)")
    p.add_argument("--verify", action="store_true", help="compare onnxruntime with the torch path; exit 1 on mismatch")
    p.add_argument("--llm-dir", default=None, help="also write the LLM alone as an HF directory here")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype of the export (default float32)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.out is None and args.llm_dir is None:
        p.error("nothing to do: give --out FILE.onnx and/or --llm-dir DIR")
    if args.verify and args.out is None:
        p.error("--verify checks the ONNX file: give --out FILE.onnx")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[%(name)s] %(message)s")
    log.setLevel(logging.INFO)  # the steps of a long export are always worth seeing

    from nemo_eagle.modeling.eagle import EagleModel

    try:
        model = EagleModel.from_pretrained(args.model, dtype=getattr(torch, args.dtype), device="cpu")
    except (FileNotFoundError, ValueError) as e:
        print(f"nemo-eagle export-onnx: {e}", file=sys.stderr)
        return 2
    status = 0
    if args.out is not None:
        try:
            path = export_image_encoder(model, args.out, opset=args.opset)
        except ValueError as e:
            print(f"nemo-eagle export-onnx: {e}", file=sys.stderr)
            return 2
        cfg = model.config
        print(f"image encoder -> {path}: pixel_values (tiles, 3, {cfg.vision.image_size}, {cfg.vision.image_size}) "
              f"-> image_embeds (tiles, {cfg.tokens_per_tile}, {cfg.llm.hidden_size})")
        if args.verify:
            result = verify_image_encoder(model, path)
            print(result.describe())
            status = 0 if result.ok else 1
    if args.llm_dir is not None:
        out = export_llm_dir(model, model.source_dir, args.llm_dir)
        print(f"LLM ({type(model.language_model).__name__}) -> {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
