"""``nemo-eagle convert``: HF directory <-> ``.nemo`` (bitwise), and megatron checkpoints through the bridge.

    nemo-eagle convert --from nvidia/Eagle2-1B --to eagle2-1b.nemo --verify
    nemo-eagle convert --from run/model.nemo --to hf_export/
    nemo-eagle convert --from hf_dir --to mcore_ckpt/ --format megatron --tp 2 --pp 1

The target format comes from ``--format`` or else from DST (``*.nemo`` -> nemo, otherwise an HF directory).
A megatron source or target is handed to ``nemo_eagle.megatron.convert.convert`` (which speaks HF; a ``.nemo``
on the other side is converted through a temporary HF directory).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from nemo_eagle.convert import nemo_file

log = logging.getLogger("nemo_eagle.convert")
FORMATS = ("hf", "nemo", "megatron")


def source_format(src: str) -> str:
    p = Path(src)
    if str(src).endswith(".nemo"):
        return "nemo"
    if (p / "megatron.json").exists():  # nemo_eagle.megatron.checkpoint.META_NAME (these also hold a config.json)
        return "megatron"
    if p.is_dir() and not (p / "config.json").exists() and _looks_megatron(p):
        return "megatron"
    return "hf"


def _looks_megatron(p: Path) -> bool:
    try:
        from nemo_eagle.megatron.checkpoint import is_megatron_checkpoint

        if is_megatron_checkpoint(p):
            return True
    except ImportError:
        pass
    markers = ("metadata.json", "latest_checkpointed_iteration.txt", "common.pt")
    return any((p / m).exists() for m in markers) or any(p.glob("iter_*")) or any(p.glob("mp_rank_*"))


def target_format(dst: str, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "nemo" if str(dst).endswith(".nemo") else "hf"


def verify(src: str, src_fmt: str, dst: str, dst_fmt: str) -> list[str]:
    """Tensor-by-tensor bitwise comparison of two checkpoints (HF or .nemo); returns the differences."""
    a, b = _tensors(src, src_fmt), _tensors(dst, dst_fmt)
    problems = [f"only in source: {k}" for k in sorted(set(a) - set(b))]
    problems += [f"only in target: {k}" for k in sorted(set(b) - set(a))]
    for k in sorted(set(a) & set(b)):
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or not torch.equal(a[k], b[k]):
            problems.append(f"differs: {k} ({a[k].dtype} {tuple(a[k].shape)} vs {b[k].dtype} {tuple(b[k].shape)})")
    return problems


def _tensors(path: str, fmt: str) -> dict[str, torch.Tensor]:
    from nemo_eagle.convert import hf as hf_io

    if fmt == "hf":
        return hf_io.read_safetensors(path)
    contents = nemo_file.read_nemo(path)
    state = contents.state_dict
    tied = contents.eagle.llm.tie_word_embeddings
    vt = hf_io.vision_prefix(state, contents.eagle.vision.convnext.get("towers"))
    return {hf_io.ours_to_hf(k, vt): t for k, t in state.items() if not (tied and k == "language_model.lm_head.weight")}


def _megatron(src: str, src_fmt: str, dst: str, dst_fmt: str, *, tp: int, pp: int, do_verify: bool) -> None:
    """Megatron conversions go through the bridge, which speaks HF; a ``.nemo`` end goes via an HF directory."""
    try:
        from nemo_eagle.megatron.convert import convert
    except ImportError as e:
        raise RuntimeError(f"megatron conversion is not available in this installation ({e}); it needs "
                           "nemo_eagle.megatron.convert and megatron-core") from e
    with tempfile.TemporaryDirectory(prefix="nemo_eagle_convert_") as tmp:
        if src_fmt == "nemo":  # .nemo -> HF (bitwise) -> megatron
            src = str(nemo_file.nemo_to_hf(src, Path(tmp) / "hf"))
        if dst_fmt == "nemo":  # megatron -> HF -> .nemo (bitwise)
            hf_dir = Path(tmp) / "hf"
            summary = convert(src, str(hf_dir), to_format="hf", tp=tp, pp=pp, verify=do_verify)
            nemo_file.hf_to_nemo(hf_dir, dst)
        else:
            summary = convert(src, dst, to_format=dst_fmt, tp=tp, pp=pp, verify=do_verify)
    if isinstance(summary, dict) and "max_logit_diff" in summary:
        print(f"verified against the reference model: max logit difference {summary['max_logit_diff']:.3e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nemo-eagle convert",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="src", required=True, help="HF directory, hub id, .nemo file or megatron checkpoint")
    p.add_argument("--to", dest="dst", required=True, help="output .nemo file or directory")
    p.add_argument("--format", choices=FORMATS, help="target format (default: from DST's suffix)")
    p.add_argument("--tp", type=int, default=1, help="tensor parallel size (megatron target)")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallel size (megatron target)")
    p.add_argument("--verify", action="store_true", help="re-read the output and compare every tensor bitwise")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from nemo_eagle.training.logs import quiet_third_party_logs

    quiet_third_party_logs()
    if args.tp < 1 or args.pp < 1:
        p.error("--tp and --pp must be >= 1")
    src_fmt, dst_fmt = source_format(args.src), target_format(args.dst, args.format)
    if dst_fmt == "nemo" and not str(args.dst).endswith(".nemo"):
        p.error(f"--format nemo needs a DST ending in .nemo, got {args.dst}")
    if dst_fmt == "hf" and str(args.dst).endswith(".nemo"):
        p.error(f"--format hf needs a directory as DST, got {args.dst}")
    if src_fmt == dst_fmt and dst_fmt != "megatron":
        p.error(f"source and target are both {src_fmt}: nothing to convert")
    t0 = time.monotonic()
    try:
        if "megatron" in (src_fmt, dst_fmt):
            _megatron(args.src, src_fmt, args.dst, dst_fmt, tp=args.tp, pp=args.pp, do_verify=args.verify)
        elif dst_fmt == "nemo":
            nemo_file.hf_to_nemo(args.src, args.dst)
        else:
            nemo_file.nemo_to_hf(args.src, args.dst)
        if args.verify and "megatron" not in (src_fmt, dst_fmt):
            from nemo_eagle.hub import resolve_checkpoint

            src = str(resolve_checkpoint(args.src)) if src_fmt == "hf" else args.src
            problems = verify(src, src_fmt, args.dst, dst_fmt)
            if problems:
                print("nemo-eagle convert: verification FAILED:\n  " + "\n  ".join(problems[:20]), file=sys.stderr)
                return 1
            print("verified: every tensor is bitwise identical")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"nemo-eagle convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.dst} ({src_fmt} -> {dst_fmt}, {time.monotonic() - t0:.1f}s)")
    return 0
