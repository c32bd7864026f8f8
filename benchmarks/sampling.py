"""What the per-sequence sampler costs: generated tokens/s of the continuous scheduler with every job plain greedy
(one batched argmax) against the same jobs asking for log-probabilities, penalties, a logit bias, sampling or a
JSON schema (each processed row by row, ``serve/engine/sampling.py``); ratios against plain greedy, same process.

The tiny test checkpoint makes the model step cheap, so the ratios show the sampler's overhead at its largest;
on a real model the step dominates.

    python benchmarks/sampling.py [--model tests/fixtures/tiny-eagle2] [--batch 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nemo_eagle.serve.engine import Engine, GenerationJob

SCHEMA = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}}},
          "required": ["words"]}
KINDS = {
    "plain greedy": {},
    "greedy + logprobs(5)": {"logprobs": 5},
    "penalties": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.2},
    "logit_bias": {"logit_bias": {"300": 2.0}},
    "sampled T=0.8 top_p=0.9": {"temperature": 0.8, "top_p": 0.9},
    "json_schema": {"guide": {"json_schema": SCHEMA}},
}


def run(engine: Engine, kind: dict, batch: int, tokens: int, prompt: str) -> tuple[float, int]:
    """(seconds, generated tokens) for ``batch`` jobs of one kind decoded together."""
    sched = engine.scheduler(max_num_seqs=batch).start()
    done = threading.Semaphore(0)
    counts = []

    def sink(ev):
        if ev.finish_reason is not None:
            counts.append(ev.completion_tokens)
            done.release()

    jobs = [GenerationJob(request_id=f"j{i}", prompt=prompt, max_tiles=None, max_new_tokens=tokens, **kind)
            for i in range(batch)]
    t0 = time.perf_counter()
    for job in jobs:
        sched.submit(job, sink)
    for _ in jobs:
        done.acquire()
    seconds = time.perf_counter() - t0
    sched.close()
    return seconds, sum(counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/tiny-eagle2"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    engine = Engine.from_pretrained(args.model, max_model_len=4096)
    prompt = engine.render([{"role": "user", "content": "Write a long story about a red fox."}])
    run(engine, KINDS["json_schema"], 1, 4, prompt)  # warm-up (grammar tokenizer built once per engine)
    base = None
    print(f"{Path(args.model).name}: batch {args.batch}, up to {args.tokens} tokens each, best of {args.repeats}")
    for name, kind in KINDS.items():
        best = min((run(engine, kind, args.batch, args.tokens, prompt) for _ in range(args.repeats)),
                   key=lambda r: r[0] / max(r[1], 1))
        rate = best[1] / best[0]
        base = base or rate
        print(f"  {name:26s} {rate:9.1f} tokens/s  ({best[1]} tokens)  x{rate / base:.2f} of plain greedy")


if __name__ == "__main__":
    main()
