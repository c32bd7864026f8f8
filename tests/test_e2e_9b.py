"""Everything the other sizes have, on the tiny Eagle2-9B checkpoint: generate / stream, the chat CLI, .nemo both
ways, ONNX export of the two-branch tower + projector, and serving (chat + embeddings) from a converted .nemo."""

from __future__ import annotations

import asyncio
import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nemo_eagle import EagleModel, EagleProcessor
from nemo_eagle.convert import nemo_file
from nemo_eagle.convert.hf import read_safetensors

QUESTION = "Describe this image in detail."


@pytest.fixture(scope="module")
def ckpt(fixtures_dir):
    return fixtures_dir / "eagle2-9b" / "tiny-eagle2-9b"


@pytest.fixture(scope="module")
def image(fixtures_dir):
    return fixtures_dir / "eagle2-9b" / "images" / "small_300x200.png"


@pytest.fixture(scope="module")
def sensitive(ckpt, tmp_path_factory):
    """A copy of the tiny 9B checkpoint redrawn so that greedy answers depend on the input."""
    import shutil

    from nemo_eagle.convert.tiny import make_input_sensitive

    out = tmp_path_factory.mktemp("sensitive9b") / "ckpt"
    shutil.copytree(ckpt, out)
    return make_input_sensitive(out, seed=0)


def _batch(proc, img):
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    )
    return proc(text=prompt, images=[img])


def test_generate_is_the_greedy_argmax_chain_and_stream_decodes_it(sensitive, image):
    model = EagleModel.from_pretrained(sensitive, dtype=torch.float32)
    proc = EagleProcessor.from_pretrained(sensitive)
    batch = _batch(proc, Image.open(image))
    out = model.generate(**batch, max_new_tokens=6, eos_token_id=-1)
    ids = batch["input_ids"]
    with torch.no_grad():  # the reference: full forward passes, argmax, no cache
        for _ in range(6):
            nxt = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert out.tolist() == ids[:, batch["input_ids"].shape[1]:].tolist()
    assert len(set(out[0].tolist())) > 1  # not the input-blind single token
    streamed = "".join(model.stream(**batch, max_new_tokens=6, eos_token_id=-1))
    assert streamed == proc.decode(out[0])  # the stream ends with what a full decode gives (one detokenizer)
    other = _batch(proc, Image.fromarray(np.full((200, 300, 3), 255, np.uint8)))
    assert model.generate(**other, max_new_tokens=6, eos_token_id=-1).tolist() != out.tolist()


def test_chat_cli_answers_from_the_9b_checkpoint(ckpt, image, capsys):
    from nemo_eagle.cli import main

    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32)
    proc = EagleProcessor.from_pretrained(ckpt)
    want = proc.decode(model.generate(**_batch(proc, str(image)), max_new_tokens=4)[0])
    rc = main(["chat", QUESTION, "--model", str(ckpt), "--image", str(image), "--max-new-tokens", "4", "--no-stream",
               "--device", "cpu", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip() == want.strip()


def test_tiles_cli_agrees_with_the_9b_reference(fixtures_dir, capsys):
    import json

    from nemo_eagle.cli import main

    for stem in ("wide_1920x1080", "tall_600x1800", "small_300x200"):
        ref = np.load(fixtures_dir / "eagle2-9b" / "expected" / f"{stem}.npz")
        assert main(["tiles", str(fixtures_dir / "eagle2-9b" / "images" / f"{stem}.png"), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out.strip().splitlines()[0])
        assert plan["num_tiles"] == int(ref["num_tiles"][0]) and plan["num_tokens"] == 256 * plan["num_tiles"]


def test_nemo_both_ways_is_bitwise_and_keeps_the_contract(ckpt, image, tmp_path, capsys):
    from nemo_eagle.convert.cli import main as convert_main

    nemo, back = tmp_path / "nine.nemo", tmp_path / "back"
    assert convert_main(["--from", str(ckpt), "--to", str(nemo), "--verify"]) == 0
    assert convert_main(["--from", str(nemo), "--to", str(back), "--verify"]) == 0
    assert capsys.readouterr().out.count("bitwise identical") == 2
    a, b = load_file(str(ckpt / "model.safetensors")), read_safetensors(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    proc = EagleProcessor.from_pretrained(nemo)
    assert (proc.tiling.prompt_format, proc.tiling.resize, proc.tiling.alpha) == ("qwen2_chat", "pil", "drop")
    ref = EagleProcessor.from_pretrained(ckpt)
    b1, b2 = _batch(proc, str(image)), _batch(ref, str(image))
    assert torch.equal(b1["input_ids"], b2["input_ids"]) and torch.equal(b1["pixel_values"], b2["pixel_values"])
    m1, m2 = (
        EagleModel.from_pretrained(nemo, dtype=torch.float32),
        EagleModel.from_pretrained(ckpt, dtype=torch.float32),
    )
    with torch.no_grad():
        assert torch.equal(m1(**b1).logits, m2(**b2).logits)


def test_onnx_export_of_the_two_branch_tower(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    from nemo_eagle.export.onnx import export_image_encoder

    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32)
    path = export_image_encoder(model, tmp_path / "enc.onnx", example_tiles=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(3, 3, 448, 448, generator=torch.Generator().manual_seed(1)) * 2 - 1
    got = torch.from_numpy(session.run(None, {"pixel_values": pixels.numpy()})[0])
    with torch.no_grad():
        want = model.get_image_features(pixels)
    assert got.shape == (3, 256, 64)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_a_9b_nemo_serves_chat_and_embeddings(ckpt, image, tmp_path):
    import httpx

    from nemo_eagle.serve.app import create_app
    from nemo_eagle.serve.backends import LocalBackend
    from nemo_eagle.serve.engine import Engine
    from nemo_eagle.serve.settings import ServeSettings

    hf = nemo_file.hf_to_nemo(ckpt, tmp_path / "n.nemo")  # the .nemo itself is served
    engine = Engine.from_pretrained(hf, device="cpu", dtype="float32", max_model_len=8192)
    url = "data:image/png;base64," + __import__("base64").b64encode(image.read_bytes()).decode()
    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32)
    proc = EagleProcessor.from_pretrained(ckpt)
    want = proc.decode(model.generate(**_batch(proc, str(image)), max_new_tokens=3)[0])

    async def main():
        backend = LocalBackend(engine, max_batch_size=2)
        app = create_app(ServeSettings(model_path=str(hf), served_model_name="nine"), backend, engine=engine)
        await backend.start()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
                chat = await client.post("/v1/chat/completions", json={
                    "model": "nine", "max_tokens": 3, "messages": [{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]})
                emb = await client.post("/v1/embeddings", json={"model": "nine", "input": [url, "a query"],
                                                                "input_type": "passage"})
        finally:
            await backend.close()
        return chat, emb

    with contextlib.redirect_stderr(io.StringIO()):
        chat, emb = asyncio.run(main())
    assert chat.status_code == 200, chat.text
    body = chat.json()
    assert body["choices"][0]["message"]["content"] == want.strip() or body["choices"][0]["message"]["content"] == want
    assert body["usage"]["prompt_tokens"] == int(_batch(proc, str(image))["input_ids"].shape[1])
    assert emb.status_code == 200, emb.text
    vecs = [d["embedding"] for d in emb.json()["data"]]
    assert len(vecs) == 2 and len(vecs[0]) == len(vecs[1]) > 0 and vecs[0] != vecs[1]
