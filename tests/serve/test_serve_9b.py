"""``nemo-eagle serve`` on a ``.nemo`` of the tiny Eagle2-9B checkpoint: a real tritonserver and the REST front; the
official ``openai`` client's answers equal the same model called in-process."""

from __future__ import annotations

import openai
import pytest
from serve_helpers import ServeProcess, data_url, image_message

from nemo_eagle.convert import nemo_file
from nemo_eagle.serve.engine import Engine

CONTEXT = 8192


@pytest.fixture(scope="module")
def nine_nemo(fixtures_dir, tmp_path_factory):
    return nemo_file.hf_to_nemo(fixtures_dir / "eagle2-9b" / "tiny-eagle2-9b", tmp_path_factory.mktemp("n") / "9b.nemo")


def test_serve_9b_nemo_chat_and_embeddings(nine_nemo, fixtures_dir, tmp_path):
    image = (fixtures_dir / "eagle2-9b" / "images" / "small_300x200.png").read_bytes()
    messages = image_message([data_url(image)], "Describe this image in detail.")
    engine = Engine.from_pretrained(nine_nemo, device="cpu", dtype="float32", max_model_len=CONTEXT)
    prompt = engine.render(messages)
    batch = engine.processor(text=prompt, images=[image])
    want = engine.tokenizer.decode(engine.model.generate(**batch, max_new_tokens=3, do_sample=False)[0].tolist())

    proc = ServeProcess(nine_nemo, tmp_path / "serve.log", "--max-model-len", str(CONTEXT))
    try:
        proc.wait_ready()
        client = openai.OpenAI(base_url=proc.base + "/v1", api_key="unused", max_retries=0, timeout=120)
        chat = client.chat.completions.create(model=client.models.list().data[0].id, messages=messages, max_tokens=3,
                                              temperature=0)
        emb = client.embeddings.create(model=client.models.list().data[0].id, input=[data_url(image), "a query"],
                                       extra_body={"input_type": "passage"})
    finally:
        code = proc.stop()
    assert code == 0, proc.logs()[-3000:]
    assert chat.choices[0].message.content == want.strip() or chat.choices[0].message.content == want
    assert chat.usage.prompt_tokens == batch["input_ids"].shape[1]
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == len(emb.data[1].embedding) > 0
