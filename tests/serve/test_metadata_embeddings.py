"""/v1/metadata tells the truth about embeddings: it says they are served while /v1/embeddings answers,
over the real engine in this process (its vectors compared with ``EagleEmbedder``)."""

from __future__ import annotations

import httpx
import pytest
import torch

from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import LocalBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

pytestmark = pytest.mark.anyio


async def test_metadata_reports_the_embeddings_route_that_works(tiny_ckpt):
    engine = Engine.from_pretrained(tiny_ckpt, max_model_len=4096)
    backend = LocalBackend(engine, max_batch_size=2)
    app = create_app(ServeSettings(model_path=str(tiny_ckpt), served_model_name="tiny"), backend, engine=engine)
    await backend.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            meta = (await client.get("/v1/metadata")).json()
            r = await client.post("/v1/embeddings", json={"model": "tiny", "input": ["hello", "world"]})
    finally:
        await backend.close()
    assert r.status_code == 200, r.text
    got = torch.tensor([d["embedding"] for d in r.json()["data"]])
    torch.testing.assert_close(got, engine.embedder.embed(["hello", "world"], "query"))
    assert meta["embeddings"] is True
