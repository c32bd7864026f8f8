"""Fuzz the REST API with schemathesis (every check) against a real server on loopback; print the request count.

    python benchmarks/fuzz_api.py [--backend local|fake] [--max-examples 20] [--seed 0]

``local`` starts ``nemo-eagle serve --backend local`` on the tiny checkpoint (the model runs in the server process);
``fake`` serves the same app over ``FakeBackend`` (no model) in this process. schemathesis reads the server's own
``/openapi.json`` and runs its phases (examples, coverage, fuzzing) with all checks: no 5xx, status codes, content
types, headers and bodies as documented, schema violations refused, schema-valid data accepted, 405 with ``Allow``.
Exit status 0 means schemathesis found nothing. The HAR file of every request lands in ``--out``.

schemathesis loads this file again as its hooks module (``SCHEMATHESIS_HOOKS``): the hook below sends the served
model id, without which every POST would stop at 404 "model does not exist".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # import from the repository root

import schemathesis  # noqa: E402

from benchmarks.serve import free_port, wait_ready  # noqa: E402 - the server helpers of the serving benchmark

MODEL = "tiny"
# Statuses a schema-valid request may still get, for what JSON Schema cannot say: an image that does not decode,
# a prompt that does not fit the context, reserved image markup in text (400); an image over the pixel limit (413).
POSITIVE_EXPECTED = os.environ.get("FUZZ_POSITIVE", "2xx,400,401,404,413,429").split(",")


@schemathesis.hook
def before_call(context, case, kwargs):
    """Every phase: a string ``model`` becomes the served id (a non-string one stays, to be refused).

    schemathesis compares integers as floats, so a ``seed`` just past OpenAI's 64-bit bounds (2**63 - 1 + 200)
    counts as valid to it; such a seed is moved onto the bound, where the server and schemathesis agree."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = os.environ.get("FUZZ_MODEL", MODEL)
    seed = body.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and 2**63 <= abs(seed + (seed < 0)) < 2**63 + 2**12:
        body["seed"] = 2**63 - 1 if seed > 0 else -(2**63)


def start_local(log: Path, max_model_len: int) -> tuple[str, subprocess.Popen]:
    """``nemo-eagle serve --backend local`` on the tiny checkpoint, on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "nemo_eagle.cli", "serve", "--backend", "local", "--model",
           str(REPO / "tests" / "fixtures" / "tiny-eagle2"), "--served-model-name", MODEL, "--port", str(port),
           "--max-model-len", str(max_model_len), "--disable-log-requests"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc, timeout=300.0)
    return base, proc


def start_fake(max_model_len: int) -> tuple[str, object]:
    """The app over FakeBackend, served by uvicorn in a thread of this process."""
    import uvicorn

    from nemo_eagle.serve.app import create_app
    from nemo_eagle.serve.backends import FakeBackend
    from nemo_eagle.serve.engine import Engine
    from nemo_eagle.serve.settings import ServeSettings

    ckpt = REPO / "tests" / "fixtures" / "tiny-eagle2"
    engine = Engine.from_pretrained(ckpt, load_model=False, max_model_len=max_model_len)
    app = create_app(ServeSettings(model_path=str(ckpt), served_model_name=MODEL), FakeBackend(), engine=engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, None, timeout=300.0)
    return base, server


def fuzz(base: str, out: Path, *, max_examples: int, seed: int) -> tuple[int, list[dict]]:
    """Run ``st run`` with all checks; (exit status, the HAR entries of every request it sent)."""
    har, config = out / "fuzz.har", out / "schemathesis.toml"
    config.write_text("[checks.positive_data_acceptance]\nexpected-statuses = "
                      + json.dumps(POSITIVE_EXPECTED) + "\n")
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", base + "/openapi.json",
           "--checks", "all", "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
           "--report", "har", "--report-har-path", str(har), "--request-timeout", "60", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(Path(__file__).resolve()), "FUZZ_MODEL": MODEL}
    rc = subprocess.run(cmd, env=env, cwd=out).returncode
    return rc, json.loads(har.read_text())["log"]["entries"] if har.is_file() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", choices=["local", "fake"], default="local")
    p.add_argument("--max-examples", type=int, default=20, help="test cases per operation and phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-model-len", type=int, default=1024, help="small, so fuzzed max_tokens stay cheap on CPU")
    p.add_argument("--out", type=Path, default=None, help="folder for the HAR file (default: a temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fuzz_api_"))
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    t0 = time.perf_counter()
    if args.backend == "local":
        base, proc = start_local(out / "server.log", args.max_model_len)
    else:
        base, _ = start_fake(args.max_model_len)
    try:
        rc, entries = fuzz(base, out, max_examples=args.max_examples, seed=args.seed)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    statuses: dict[int, int] = {}
    for e in entries:
        statuses[e["response"]["status"]] = statuses.get(e["response"]["status"], 0) + 1
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    print(f"schemathesis {schemathesis.SCHEMATHESIS_VERSION} against the {args.backend} backend: "
          f"{len(entries)} requests in {time.perf_counter() - t0:.0f}s, "
          f"statuses {dict(sorted(statuses.items()))}, 5xx: {server_errors}, "
          f"{'no failures' if rc == 0 else f'FAILURES (exit status {rc})'}; HAR: {out / 'fuzz.har'}")
    return 1 if rc or server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
