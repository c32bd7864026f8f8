"""The whole journey of a user, as separate processes: make a checkpoint, ``nemo-eagle train`` it a few steps,
``nemo-eagle serve --model model.nemo`` (a real tritonserver), chat through the official ``openai`` client and get
the answer the ``.nemo`` gives in-process, ``nemo-eagle eval`` with ``--model model.nemo`` and with ``--endpoint``
gives the same predictions, and ``nemo-eagle index`` / ``search`` work on the ``.nemo``.

The checkpoint is the input-sensitive one, so the served-vs-in-process comparisons can fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch

from nemo_eagle import EagleModel, EagleProcessor

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "serve"))
sys.path.insert(0, str(REPO / "tests" / "training"))

from serve_helpers import ServeProcess, data_url, image_message  # noqa: E402
from train_helpers import write_color_dataset  # noqa: E402

EVAL_DATA = REPO / "tests" / "eval" / "data"


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, f"nemo-eagle {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def trained(sensitive_ckpt, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("journey")
    data = write_color_dataset(root / "data")
    exp = root / "run"
    done = _cli("train", f"model.pretrained={sensitive_ckpt}", f"data.train_manifest={data / 'train.jsonl'}",
                "trainer=cpu_debug", "precision=fp32", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
                "data.num_workers=0", "data.micro_batch_size=1", "optim.lr=1e-4",
                f"exp_dir={exp}")
    assert f"trained model: {exp / 'model.nemo'}" in done.stdout
    return exp / "model.nemo"


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    proc = ServeProcess(trained, tmp_path_factory.mktemp("serve") / "serve.log", "--max-model-len", "4096",
                        "--served-model-name", "journey")
    try:
        proc.wait_ready()
        yield proc
    finally:
        assert proc.stop() == 0, proc.logs()[-3000:]


def _in_process(nemo: Path, images: list, text: str, max_tokens: int, max_tiles: int) -> str:
    proc, model = EagleProcessor.from_pretrained(nemo), EagleModel.from_pretrained(nemo, dtype=torch.float32)
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    batch = proc(text=proc.apply_chat_template([{"role": "user", "content": content}]), images=images,
                 max_tiles=max_tiles)
    ids = model.generate(**batch, max_new_tokens=max_tokens)[0].tolist()
    eos = proc.tokenizer.eos_token_id
    return proc.decode(ids[: ids.index(eos)] if eos in ids else ids)


def test_the_trained_nemo_serves_the_answers_it_gives_in_process(trained, server, fixtures_dir):
    from PIL import Image

    client = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["journey"]
    paths = [fixtures_dir / "images" / n for n in ("rgb_640x480.png", "wide_1280x320.png")]
    answers = []
    for images, text in ((paths[:1], "What colour is this?"), (paths, "Compare them."), (paths[::-1], "Compare them.")):
        urls = [data_url(p.read_bytes()) for p in images]
        got = client.chat.completions.create(model="journey", messages=image_message(urls, text), max_tokens=12,
                                             temperature=0, extra_body={"max_tiles": 4})
        want = _in_process(trained, [Image.open(p) for p in images], text, 12, 4)
        assert got.choices[0].message.content == want
        answers.append(want)
    assert len(set(answers)) == 3  # the answers depend on the images and their order


def _predictions(path: Path) -> dict[str, str]:
    return {r["id"]: r["prediction"] for r in map(json.loads, path.read_text().splitlines())}


def test_eval_in_process_and_through_the_server_agree(trained, server, tmp_path):
    data = next((EVAL_DATA / "docvqa").glob("*.json"))
    common = ("eval", "--benchmark", "docvqa", "--data", str(data), "--limit", "3", "--max-tiles", "2")
    _cli(*common, "--model", str(trained), "--out", str(tmp_path / "local"))
    _cli(*common, "--endpoint", server.base + "/v1", "--out", str(tmp_path / "served"))
    local = _predictions(tmp_path / "local" / "docvqa" / "predictions.jsonl")
    served = _predictions(tmp_path / "served" / "docvqa" / "predictions.jsonl")
    assert local == served and len(local) == 3


def test_index_and_search_with_the_nemo(trained, tmp_path):
    pages = REPO / "tests" / "embed" / "data" / "vidore_tiny" / "images"
    db = str(tmp_path / "db") + "?collection=pages"
    _cli("index", "--model", str(trained), "--input", str(pages), "--db", db, "--max-tiles", "1", "--no-progress")
    found = json.loads(_cli("search", "--model", str(trained), "--db", db, "--top-k", "2", "revenue chart").stdout)
    assert [r["rank"] for r in found["results"]] == [1, 2]
    assert {r["key"] for r in found["results"]} <= {p.name for p in pages.glob("*.png")}
