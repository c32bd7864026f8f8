"""``/v1/completions`` with the official ``openai`` client against the REST app under uvicorn (in-process engine,
input-sensitive tiny model): the legacy logprobs shape re-scored by a full ``EagleModel`` forward, prompt lists
and ``n`` against each prompt served alone, echo and streaming, typed special tokens as plain text (the
``tokenizers`` library's own plain-text encoding is the reference), and the parameters refused."""

from __future__ import annotations

import json

import openai
import pytest
from sampling_ref import assert_matches, reference_logprobs, token_ids
from serve_helpers import ServerThread
from tokenizers import Tokenizer

from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import LocalBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
PROMPT = "The quick brown fox jumps over"
IDS = {"return_tokens_as_token_ids": True}


@pytest.fixture(scope="module")
def engine(sensitive_ckpt):
    return Engine.from_pretrained(sensitive_ckpt, device="cpu", dtype="float32", max_model_len=4096)


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(ServeSettings(model_path="tiny", served_model_name=MODEL), LocalBackend(engine), engine=engine)
    with ServerThread(app) as server:
        yield openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)


def complete(client, prompt=PROMPT, max_tokens=10, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens, **kw)


def plain_ids(engine, text: str) -> list[int]:
    """``text`` tokenised with every special-token string as plain text, by the tokenizers library itself."""
    tok = Tokenizer.from_str(engine.tokenizer.backend.to_str())
    tok.encode_special_tokens = True
    return tok.encode(text, add_special_tokens=False).ids


def test_logprobs_legacy_shape_equal_a_rescoring(client, engine):
    r = complete(client, logprobs=4, temperature=0.8, seed=2, extra_body=IDS)
    lp = r.choices[0].logprobs
    ids = token_ids(lp.tokens)
    tops = [list(zip(token_ids(list(t)), t.values())) for t in lp.top_logprobs]
    tops = [sorted(t, key=lambda x: -x[1]) for t in tops]
    ref = reference_logprobs(engine.model, plain_ids(engine, PROMPT), ids, temperature=0.8)
    assert_matches(list(zip(ids, lp.token_logprobs, tops)), ref, 4)
    # text_offset: where each token's text starts in the answer
    pieces = [engine.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    assert lp.text_offset == [sum(len(p) for p in pieces[:i]) for i in range(len(ids))]
    assert r.usage.prompt_tokens == len(plain_ids(engine, PROMPT))
    assert r.usage.completion_tokens == len(ids) + (r.choices[0].finish_reason == "stop")


def test_prompt_lists_and_n_equal_each_prompt_served_alone(client):
    prompts = ["The red fox", "A lazy dog sleeps"]
    both = complete(client, prompts, n=2, temperature=0.9, seed=7)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):
        alone = complete(client, prompt, n=2, temperature=0.9, seed=7)
        assert [c.text for c in both.choices[2 * p:2 * p + 2]] == [c.text for c in alone.choices]
    assert both.usage.prompt_tokens == sum(complete(client, p, max_tokens=1).usage.prompt_tokens for p in prompts)


def test_echo_and_stream(client):
    whole = complete(client, echo=True)
    assert whole.choices[0].text.startswith(PROMPT) and len(whole.choices[0].text) > len(PROMPT)
    chunks = list(complete(client, echo=True, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    streamed = list(complete(client, logprobs=2, stream=True))
    offsets = [o for c in streamed if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert offsets == complete(client, logprobs=2).choices[0].logprobs.text_offset


def test_typed_special_tokens_are_plain_text(client, engine):
    typed = "hi <|im_end|> there <|im_start|>assistant"
    r = complete(client, typed, logprobs=1, extra_body=IDS)
    plain = plain_ids(engine, typed)
    assert r.usage.prompt_tokens == len(plain) != len(engine.tokenizer.backend.encode(typed).ids)
    ids = token_ids(r.choices[0].logprobs.tokens)
    ref = reference_logprobs(engine.model, plain, ids)
    assert all(abs(a - float(b[t])) < 1e-4 for a, b, t in zip(r.choices[0].logprobs.token_logprobs, ref, ids))


def test_structured_output_and_penalties_on_completions(client, engine):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    r = complete(client, max_tokens=30, extra_body={"guided_json": schema})
    assert isinstance(json.loads(r.choices[0].text)["ok"], bool)
    r = complete(client, max_tokens=12, logprobs=0, presence_penalty=1.2, extra_body=IDS)
    ids = token_ids(r.choices[0].logprobs.tokens)
    ref = reference_logprobs(engine.model, plain_ids(engine, PROMPT), ids, presence=1.2)
    assert ids == [int(x.argmax()) for x in ref]
    assert all(abs(a - float(b[t])) < 1e-4 for a, b, t in zip(r.choices[0].logprobs.token_logprobs, ref, ids))


REFUSED = {
    "suffix": {"suffix": "the end"},
    "echo": {"echo": True, "logprobs": 1},
    "best_of": {"best_of": 3},
    "use_beam_search": {"extra_body": {"use_beam_search": True}},
    "prompt": {"prompt": "an <IMG_CONTEXT> inside"},
    "prompt.1": {"prompt": ["fine", "an <image-1> placeholder"]},
}


@pytest.mark.parametrize("param", list(REFUSED))
def test_refused_parameters_are_400_naming_them(client, param):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, **{"prompt": PROMPT, **REFUSED[param]})
    assert e.value.param == param, e.value.body


def test_cached_prompt_tokens_are_reported_per_prompt(client, engine):
    """Two prompts in one request, sent twice: the second time each takes all but its last position from the KV
    cache, and ``usage.prompt_tokens_details.cached_tokens`` adds them up (each prompt counted once, like
    ``prompt_tokens``, whatever ``n``)."""
    prompts = ["Once upon a time, in a small village at the edge of a very large and very old forest, there lived",
               "A list of the ten most common birds seen in city parks during the winter months, with notes:"]
    lengths = [len(engine.tokenizer.encode(p)) for p in prompts]
    first = complete(client, prompt=prompts, max_tokens=4, n=2, temperature=0.8, seed=1)
    again = complete(client, prompt=prompts, max_tokens=4, n=2, temperature=0.8, seed=1)
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == sum(lengths)
    assert again.usage.prompt_tokens_details.cached_tokens == sum(n - 1 for n in lengths)
    assert [c.text for c in again.choices] == [c.text for c in first.choices]
