"""Sampling parameters, log-probabilities and structured output through a real tritonserver (``nemo-eagle
serve`` with PyTriton's bundled binary), driven by the official ``openai`` client: the job's new fields and the
per-token records cross the Triton wire intact, and a grammar the engine cannot compile is a 400 naming the
parameter. Reference: a full ``EagleModel`` forward re-scoring the returned tokens (``sampling_ref.py``)."""

from __future__ import annotations

import json

import openai
import pytest
from sampling_ref import assert_matches, reference_logprobs, token_ids
from serve_helpers import ServeProcess

from nemo_eagle.serve.engine import Engine

MESSAGES = [{"role": "user", "content": "tell me about the red fox and the lazy dog"}]


@pytest.fixture(scope="module")
def engine(sensitive_ckpt):
    return Engine.from_pretrained(sensitive_ckpt, device="cpu", dtype="float32", max_model_len=4096)


@pytest.fixture(scope="module")
def client(sensitive_ckpt, tmp_path_factory):
    proc = ServeProcess(sensitive_ckpt, tmp_path_factory.mktemp("serve") / "serve.log", "--max-model-len", "4096",
                        "--served-model-name", "tiny", "--dtype", "float32")
    try:
        proc.wait_ready()
        yield openai.OpenAI(base_url=proc.base + "/v1", api_key="unused", max_retries=0, timeout=300)
    finally:
        assert proc.stop() == 0, proc.logs()[-3000:]


def test_logprobs_and_penalties_through_triton(client, engine):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, logprobs=True,
                                       top_logprobs=3, frequency_penalty=0.7, logit_bias={"300": 3.0},
                                       temperature=0.9, seed=4, extra_body={"return_tokens_as_token_ids": True})
    content = r.choices[0].logprobs.content
    got = [(token_ids([c.token])[0], c.logprob, list(zip(token_ids([t.token for t in c.top_logprobs]),
                                                         [t.logprob for t in c.top_logprobs]))) for c in content]
    prompt = engine.tokenizer.encode(engine.render(MESSAGES))
    ref = reference_logprobs(engine.model, prompt, [t for t, _, _ in got], temperature=0.9, frequency=0.7,
                             bias={300: 3.0})
    assert_matches(got, ref, 3)


def test_structured_output_and_completions_through_triton(client):
    schema = {"type": "object", "properties": {"pet": {"enum": ["fox", "dog"]}}, "required": ["pet"],
              "additionalProperties": False}
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, response_format={
        "type": "json_schema", "json_schema": {"name": "pet", "schema": schema}})
    assert json.loads(r.choices[0].message.content)["pet"] in ("fox", "dog")
    c = client.completions.create(model="tiny", prompt=["The red fox", "A dog"], max_tokens=5, logprobs=2)
    assert len(c.choices) == 2 and all(len(ch.logprobs.tokens) == len(ch.logprobs.token_logprobs) > 0
                                       for ch in c.choices)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MESSAGES, extra_body={"guided_regex": "(unclosed"})
    assert e.value.param == "guided_regex"
