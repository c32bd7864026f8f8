"""``nemo-eagle eval``: score a checkpoint (in process) or a running endpoint on one benchmark."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nemo_eagle.cli import add_api_key_arg, add_device_arg, add_dtype_arg, add_out_arg
from nemo_eagle.eval.benchmarks import BENCHMARKS, DataError, get_benchmark, load_items
from nemo_eagle.eval.predictors import EndpointError, EndpointRefused
from nemo_eagle.eval.runner import EvalSettings, run_eval

log = logging.getLogger("nemo_eagle.eval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nemo-eagle eval",
        description="Evaluate on a benchmark with NVIDIA's Eagle2 protocol (per-benchmark tile limit and 2x "
        "upscaling, greedy decoding). Resumable: predictions already in OUT are kept. Writes report.json, "
        "report.md and chart.png per benchmark, and summary.* across all benchmarks in OUT.",
    )
    p.add_argument("--benchmark", required=True, help=", ".join(BENCHMARKS))
    p.add_argument("--data", type=Path, required=True, help="the benchmark's file (JSON / TSV) in its released format")
    p.add_argument("--image-root", type=Path, default=None, help="folder the data file's image paths are relative to "
                   "(default: the data file's folder)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="checkpoint folder (HF layout), run in this process")
    src.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    p.add_argument("--served-model", default=None, help="model name for --endpoint (default: first of /v1/models)")
    add_api_key_arg(p, what="--endpoint")
    add_out_arg(p, type=Path, default=Path("eval_out"), help="output folder (default: eval_out)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--split", default=None, help="ScienceQA / MMMU / MMBench split (defaults: test / validation)")
    p.add_argument("--max-tiles", type=int, default=None, help="override the benchmark's tile limit")
    up = p.add_mutually_exclusive_group()
    up.add_argument("--upscale", dest="upscale", action="store_true", default=None, help="force 2x upscaling")
    up.add_argument("--no-upscale", dest="upscale", action="store_false", help="never upscale")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the benchmark's answer length")
    add_device_arg(p, default="cpu", help_default="cpu; for --model")
    add_dtype_arg(p, default="float32", help_default="float32; for --model")
    p.add_argument("--overwrite", action="store_true", help="discard predictions of an earlier, different run")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        bench = get_benchmark(args.benchmark)
        for name in ("limit", "max_tiles", "max_new_tokens"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        items = load_items(bench, args.data, args.image_root, args.split)
        settings = EvalSettings(
            benchmark=bench.name, data=str(args.data.resolve()), split=args.split, limit=args.limit,
            max_tiles=args.max_tiles or bench.max_tiles,
            upscale=bench.upscale if args.upscale is None else args.upscale,
            max_new_tokens=args.max_new_tokens or bench.max_new_tokens,
        )
        if args.model is not None:
            from nemo_eagle.checkpoint import open_checkpoint

            open_checkpoint(args.model)  # any format; a path that holds no checkpoint fails here, in one line
            from nemo_eagle.eval.predictors import LocalPredictor

            predictor = LocalPredictor(args.model, device=args.device, dtype=args.dtype)
        else:
            from nemo_eagle.eval.predictors import EndpointPredictor

            predictor = EndpointPredictor(args.endpoint, model=args.served_model,
                                          api_key=args.api_key or os.environ.get("OPENAI_API_KEY"))
        report = run_eval(bench, items, predictor, args.out, settings, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, DataError, EndpointRefused) as e:
        print(f"nemo-eagle eval: {e}", file=sys.stderr)
        return 2
    except (EndpointError, OSError) as e:  # httpx transport errors are OSError-like; keep what was predicted
        print(f"nemo-eagle eval: {type(e).__name__}: {e}; predictions so far are kept in {args.out}, rerun to resume",
              file=sys.stderr)
        return 1
    score = "n/a" if report["score"] is None else f"{report['score']:.2f}"
    print(f"{bench.name}: {report['metric']} = {score} ({report['num_scored']}/{report['num_questions']} questions)"
          f" -> {args.out / bench.name / 'report.md'}")
    return 0 if report["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
