"""Fixtures for the eval tests: the benchmark fixture files, the tiny model as a predictor, and a small
OpenAI-compatible endpoint (FastAPI on 127.0.0.1) that answers with the same model in this process."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
FILES = {
    "docvqa": "docvqa/val_v1.0_withQT.json",
    "infovqa": "infovqa/infographicsVQA_val_v1.0_withQT.json",
    "chartqa": "chartqa/test_human.json",
    "textvqa": "textvqa/TextVQA_0.5.1_val.json",
    "ocrbench": "ocrbench/OCRBench.json",
    "ai2d": "ai2d/AI2D_TEST.tsv",
    "scienceqa": "scienceqa/problems.json",
    "mmstar": "mmstar/MMStar.tsv",
    "mmbench": "mmbench/MMBench_DEV_EN_V11.tsv",
    "mmmu": "mmmu/MMMU_DEV_VAL.tsv",
    "mathvista": "mathvista/annot_testmini.json",
}


@pytest.fixture(scope="session")
def eval_files() -> dict[str, Path]:
    return {name: DATA / rel for name, rel in FILES.items()}


@pytest.fixture(scope="session")
def tiny_predictor(tiny_ckpt):
    from nemo_eagle.eval.predictors import LocalPredictor

    return LocalPredictor(tiny_ckpt)


@pytest.fixture(scope="session")
def sensitive_predictor(sensitive_ckpt):
    from nemo_eagle.eval.predictors import LocalPredictor

    return LocalPredictor(sensitive_ckpt)


def make_eagle_app(processor, model, name: str) -> FastAPI:
    """/v1/chat/completions over EagleModel: content parts -> chat template -> processor (max_tiles from the
    request body) -> greedy generate. Written independently of nemo_eagle.eval's predictors."""
    import torch

    from nemo_eagle.data.images import decode_data_url

    app = FastAPI()
    app.state.requests = []

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append({k: v for k, v in body.items() if k != "messages"})
        content, images = [], []
        for part in body["messages"][-1]["content"]:
            if part["type"] == "image_url":
                images.append(Image.open(io.BytesIO(decode_data_url(part["image_url"]["url"]))))
                content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": part["text"]})
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        batch = processor(text=prompt, images=images, max_tiles=body.get("max_tiles"), return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**batch, max_new_tokens=body["max_tokens"], do_sample=body["temperature"] > 0)
        text = processor.decode(ids[0]).strip()
        return JSONResponse({"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop"}]})

    return app


class ServerThread:
    def __init__(self, app: FastAPI, lifespan: str = "off"):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "test endpoint did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def eagle_endpoint(sensitive_predictor):
    app = make_eagle_app(sensitive_predictor.processor, sensitive_predictor.model, "sensitive-eagle2")
    with ServerThread(app) as server:
        yield server.url, app


@pytest.fixture(scope="module")
def serve_endpoint(sensitive_ckpt):
    """The project's own REST app (nemo_eagle.serve) with the in-process backend."""
    from nemo_eagle.serve import app as app_mod
    from nemo_eagle.serve.backends import LocalBackend
    from nemo_eagle.serve.engine import Engine
    from nemo_eagle.serve.settings import ServeSettings

    settings = ServeSettings(model_path=str(sensitive_ckpt), served_model_name="served-eagle2", max_tiles=24,
                             backend="local", device="cpu", dtype="float32")
    engine = Engine.from_pretrained(sensitive_ckpt, device="cpu", dtype="float32")
    app = app_mod.create_app(settings, LocalBackend(engine), engine=engine)
    with ServerThread(app, lifespan="on") as server:
        yield server.url
