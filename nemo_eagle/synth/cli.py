"""``nemo-eagle synth``: synthetic VQA / caption / reasoning data from an OpenAI-compatible teacher endpoint."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nemo_eagle.cli import add_api_key_arg
from nemo_eagle.synth.filters import LANGUAGE_SCRIPTS, FilterConfig
from nemo_eagle.synth.imagehash import HASHES
from nemo_eagle.synth.pipeline import SynthSettings, run_synth
from nemo_eagle.synth.tasks import TASKS, parse_tasks

log = logging.getLogger("nemo_eagle.synth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nemo-eagle synth",
        description="Ask a teacher VLM (any OpenAI-compatible chat endpoint) for training samples about each image, "
        "filter them and write LLaVA JSONL + WebDataset shards + a data card. Killed and restarted with the same "
        "options it continues where it stopped; every sample is produced exactly once.",
    )
    p.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    p.add_argument("--teacher-url", required=True, help="base URL of the endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--teacher-model", required=True, help="model name sent in each request")
    p.add_argument("--tasks", default="caption,vqa", help=f"comma-separated, from: {','.join(TASKS)}")
    p.add_argument("--out", type=Path, required=True, help="output folder (also holds the journal and the cache)")
    p.add_argument("--samples-per-task", type=int, default=1, help="samples per image and task")
    p.add_argument("--seed", type=int, default=0, help="seeds the per-sample teacher seeds")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=1024, help="max tokens of a teacher reply")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a failed request (429, 5xx, timeouts)")
    p.add_argument("--backoff", type=float, default=0.5, help="first retry delay in seconds; doubles each retry")
    p.add_argument("--rate-limit", type=float, default=0.0, help="max requests per second (0: unlimited)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    add_api_key_arg(p, what="the teacher endpoint")
    p.add_argument("--cache-dir", type=Path, default=None, help="response cache (default: OUT/cache)")
    p.add_argument("--retry-errors", action="store_true", help="ask again for samples journaled as final errors")
    p.add_argument("--no-verify", action="store_true", help="skip the verifier call (no answer-consistency filter)")
    p.add_argument("--language", default="en", help=f"'any' or one of {','.join(sorted(LANGUAGE_SCRIPTS))}")
    p.add_argument("--dedup-bits", type=int, default=4, help="perceptual-hash distance counted as the same image")
    p.add_argument("--image-hash", choices=sorted(HASHES), default="dhash")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per WebDataset shard")
    p.add_argument("--export-only", action="store_true", help="no teacher calls: refilter and rewrite the outputs")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value, low in (("--samples-per-task", args.samples_per_task, 1), ("--concurrency", args.concurrency, 1),
                             ("--max-retries", args.max_retries, 0), ("--shard-size", args.shard_size, 1)):
        if value < low:
            print(f"nemo-eagle synth: {name} must be >= {low}, got {value}", file=sys.stderr)
            return 2
    try:
        tasks = [t.name for t in parse_tasks(args.tasks)]
        filters = FilterConfig(language=args.language, verify=not args.no_verify, dedup_bits=args.dedup_bits)
        settings = SynthSettings(
            images=args.images, out=args.out, teacher_url=args.teacher_url, teacher_model=args.teacher_model,
            tasks=tasks, samples_per_task=args.samples_per_task, seed=args.seed, temperature=args.temperature,
            max_tokens=args.max_tokens, verify=not args.no_verify, concurrency=args.concurrency,
            max_retries=args.max_retries, rate_limit=args.rate_limit, timeout=args.timeout, backoff=args.backoff,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), cache_dir=args.cache_dir,
            retry_errors=args.retry_errors, shard_size=args.shard_size, image_hash=args.image_hash, filters=filters,
        )
        return run_synth(settings, export_only=args.export_only)
    except (ValueError, FileNotFoundError) as e:
        print(f"nemo-eagle synth: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nemo-eagle synth: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
