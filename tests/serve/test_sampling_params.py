"""Chat sampling parameters, log-probabilities and structured output, driven by the official ``openai`` client
against the REST app under uvicorn with the in-process engine, on the input-sensitive tiny model.

References: a full ``EagleModel`` forward over prompt + answer with the README's definitions applied by hand
(``sampling_ref.py``), the same request served alone (batch neutrality), Python's ``json`` and ``re``."""

from __future__ import annotations

import json
import re

import openai
import pytest
from sampling_ref import assert_matches, reference_logprobs, token_ids
from serve_helpers import ServerThread

from nemo_eagle.serve.app import create_app
from nemo_eagle.serve.backends import LocalBackend
from nemo_eagle.serve.engine import Engine
from nemo_eagle.serve.settings import ServeSettings

MODEL = "tiny"
HELLO = [{"role": "user", "content": "tell me about the red fox and the lazy dog"}]
IDS = {"return_tokens_as_token_ids": True}


@pytest.fixture(scope="module")
def engine(sensitive_ckpt):
    return Engine.from_pretrained(sensitive_ckpt, device="cpu", dtype="float32", max_model_len=4096)


def serve(engine, scheduler: str):
    backend = LocalBackend(engine, max_batch_size=4, scheduler=scheduler)
    return ServerThread(create_app(ServeSettings(model_path="tiny", served_model_name=MODEL), backend, engine=engine))


@pytest.fixture(scope="module")
def client(engine):
    with serve(engine, "continuous") as server:
        yield openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)


def prompt_ids(engine, messages) -> list[int]:
    return engine.tokenizer.encode(engine.render(messages))


def records(choice) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """(token id, logprob, [(alternative id, logprob)]) per answer token of a chat choice."""
    out = []
    for c in choice.logprobs.content:
        out.append((token_ids([c.token])[0], c.logprob, list(zip(token_ids([t.token for t in c.top_logprobs]),
                                                                 [t.logprob for t in c.top_logprobs]))))
    return out


def chat(client, max_tokens=12, messages=HELLO, **kw):
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, **kw)


# -------------------------------------------------------------------------------------------- logprobs
@pytest.mark.parametrize("params", [{"temperature": 0}, {"temperature": 0.7, "seed": 3},
                                    {"temperature": 1.3, "top_p": 0.6, "seed": 5}], ids=["greedy", "T", "top_p"])
def test_logprobs_equal_a_rescoring_of_the_same_tokens(client, engine, params):
    r = chat(client, logprobs=True, top_logprobs=5, extra_body=IDS, **params)
    got = records(r.choices[0])
    ref = reference_logprobs(engine.model, prompt_ids(engine, HELLO), [t for t, _, _ in got],
                             temperature=params["temperature"], top_p=params.get("top_p", 1.0))
    assert_matches(got, ref, 5)
    assert r.usage.completion_tokens == len(got) + (r.choices[0].finish_reason == "stop")
    if params["temperature"] == 0:
        assert [t for t, _, _ in got] == [int(lp.argmax()) for lp in ref]
    # the text is the tokens' text, and a plain request (token text, not ids) has the same numbers
    plain = chat(client, logprobs=True, top_logprobs=5, **params).choices[0]
    assert plain.message.content == r.choices[0].message.content
    # the same numbers up to rounding: the second request reuses the first one's prompt keys/values (KV prefix
    # reuse), so its last prompt position is computed alone instead of within the whole prompt
    assert [c.logprob for c in plain.logprobs.content] == pytest.approx([lp for _, lp, _ in got], rel=1e-5, abs=1e-6)
    assert all(bytes(c.bytes).decode(errors="replace") == c.token for c in plain.logprobs.content)
    text = [c for c in plain.logprobs.content if c.token not in engine.tokenizer.special_tokens]
    assert bytes(b for c in text for b in c.bytes).decode(errors="replace") == plain.message.content


def test_streamed_logprobs_equal_the_whole_answer(client):
    whole = chat(client, logprobs=True, top_logprobs=2, extra_body=IDS).choices[0]
    pieces, text = [], ""
    for chunk in chat(client, logprobs=True, top_logprobs=2, extra_body=IDS, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            pieces += chunk.choices[0].logprobs.content
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    assert text == whole.message.content
    assert [(c.token, c.logprob) for c in pieces] == [(c.token, c.logprob) for c in whole.logprobs.content]
    assert chat(client).choices[0].logprobs is None  # not asked, not sent


# ------------------------------------------------------------------------------------- logits processors
PENALTIES = {  # request fields, vLLM extra fields, the definition for the re-scoring
    "presence": ({"presence_penalty": 1.5}, {}, {"presence": 1.5}),
    "frequency": ({"frequency_penalty": 0.8}, {}, {"frequency": 0.8}),
    "repetition": ({}, {"repetition_penalty": 1.6}, {"repetition": 1.6}),
    "logit_bias": ({"logit_bias": {"300": 4.0, "77": -3.0}}, {}, {"bias": {300: 4.0, 77: -3.0}}),
}


@pytest.mark.parametrize("name", list(PENALTIES))
def test_penalties_change_the_distribution_as_specified(client, engine, name):
    request, extra, definition = PENALTIES[name]
    r = chat(client, max_tokens=16, logprobs=True, top_logprobs=3, extra_body={**IDS, **extra}, **request)
    got = records(r.choices[0])
    tokens = [t for t, _, _ in got]
    ref = reference_logprobs(engine.model, prompt_ids(engine, HELLO), tokens, **definition)
    assert_matches(got, ref, 3)
    assert tokens == [int(lp.argmax()) for lp in ref]  # greedy over the penalised distribution
    unpenalised = reference_logprobs(engine.model, prompt_ids(engine, HELLO), tokens)
    assert max(float((a - b).abs().max()) for a, b in zip(ref, unpenalised)) > 1e-2  # the penalty mattered


def test_logit_bias_forces_and_bans_tokens(client, engine):
    plain = records(chat(client, logprobs=True, extra_body=IDS).choices[0])
    forced = 300
    r = chat(client, logprobs=True, logit_bias={str(forced): 100}, extra_body=IDS)
    assert [t for t, _, _ in records(r.choices[0])] == [forced] * 12
    banned = plain[0][0]
    r = chat(client, logprobs=True, logit_bias={str(banned): -100}, extra_body=IDS)
    assert banned not in [t for t, _, _ in records(r.choices[0])]


def test_min_tokens_keeps_the_end_of_turn_out(client, engine):
    eos = str(engine.tokenizer.eos_token_id)
    r = chat(client, max_tokens=20, logit_bias={eos: 100})
    assert (r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason) == ("", 1, "stop")
    r = chat(client, max_tokens=20, logit_bias={eos: 100}, extra_body={"min_tokens": 6})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content


@pytest.mark.parametrize("temperature", [1e-39, 1e-300, 1e-6])
def test_tiny_temperature_is_greedy(client, temperature):
    greedy = chat(client).choices[0].message.content
    assert chat(client, temperature=temperature, seed=1).choices[0].message.content == greedy
    assert chat(client, temperature=1.0, top_p=1e-9, seed=1).choices[0].message.content == greedy


# ------------------------------------------------------------------------------------- structured output
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "pet": {"enum": ["fox", "dog"]}},
          "required": ["name", "age", "pet"], "additionalProperties": False}


def valid(obj) -> bool:
    """``SCHEMA`` checked by hand."""
    return (isinstance(obj, dict) and set(obj) == {"name", "age", "pet"} and isinstance(obj["name"], str)
            and len(obj["name"]) <= 6 and type(obj["age"]) is int and 0 <= obj["age"] <= 99
            and obj["pet"] in ("fox", "dog"))


def test_json_schema_output_parses_and_validates(client):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for params in ({}, {"temperature": 1.0, "seed": 11}):
        r = chat(client, max_tokens=60, response_format=rf, **params)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        assert valid(json.loads(r.choices[0].message.content))
    r = chat(client, max_tokens=60, extra_body={"guided_json": SCHEMA})
    assert valid(json.loads(r.choices[0].message.content))
    assert not valid(json.loads('{"name": "fox", "age": 100, "pet": "fox"}'))  # the checker can fail


def test_json_object_mode(client, engine):
    tok = engine.tokenizer
    short = {str(tok.token_to_id(t)): 30 for t in ('"', ":", "}", "0")}  # steer the tiny model to close quickly
    r = chat(client, max_tokens=40, response_format={"type": "json_object"}, logit_bias=short)
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_regex_and_choice(client):
    r = chat(client, max_tokens=20, extra_body={"guided_regex": "[0-9]{3}-[a-z]{2}"})
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", r.choices[0].message.content)
    choices = ["red fox", "lazy dog", "naïve \"cat\""]
    for seed in range(3):
        r = chat(client, max_tokens=20, temperature=1.0, seed=seed, extra_body={"guided_choice": choices})
        assert r.choices[0].message.content in choices
    r = chat(client, max_tokens=20, extra_body={"structured_outputs": {"regex": "(yes|no)!"}})
    assert r.choices[0].message.content in ("yes!", "no!")


def test_constrained_request_leaves_its_neighbour_unchanged(client):
    alone = chat(client, max_tokens=30).choices[0].message.content
    other = chat(client, max_tokens=2000, stream=True, logprobs=True, top_logprobs=3, presence_penalty=1.0,
                 logit_bias={"300": 2.0}, extra_body={"guided_regex": "[a-z ]+", "min_tokens": 2000})
    first = next(iter(other))
    assert first.choices
    try:
        beside = chat(client, max_tokens=30).choices[0].message.content
        later = next(iter(other))  # still generating: the two were decoded together
        assert later.choices and later.choices[0].finish_reason is None
    finally:
        other.close()
    assert beside == alone


def test_the_static_path_samples_the_same(engine, client):
    with serve(engine, "static") as server:
        static = openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)
        for kw, extra in (({"frequency_penalty": 0.8, "logit_bias": {"300": 3.0}}, {}),
                          ({}, {"guided_choice": ["red fox", "lazy dog"]})):
            a = chat(static, logprobs=True, top_logprobs=2, extra_body={**IDS, **extra}, **kw).choices[0]
            b = chat(client, logprobs=True, top_logprobs=2, extra_body={**IDS, **extra}, **kw).choices[0]
            assert a.message.content == b.message.content
            assert len(records(a)) == len(records(b)) > 0
            for x, y in zip(records(a), records(b)):
                assert x[0] == y[0] and abs(x[1] - y[1]) < 1e-4


# ---------------------------------------------------------------------------------------------- refusals
REFUSED = {
    "tools": {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
    "tool_choice": {"tool_choice": "required"},
    "use_beam_search": {"extra_body": {"use_beam_search": True}},
    "best_of": {"extra_body": {"best_of": 3}},
    "min_p": {"extra_body": {"min_p": 0.1}},
    "top_logprobs": {"top_logprobs": 3},
    "logit_bias": {"logit_bias": {"100000": 1}},
    "guided_regex": {"extra_body": {"guided_regex": "[0-9"}},
    "guided_choice": {"response_format": {"type": "json_object"}, "extra_body": {"guided_choice": ["a"]}},
    "response_format": {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no such type"}}}}}},
}


@pytest.mark.parametrize("param", list(REFUSED))
def test_unsupported_or_bad_parameters_are_400_naming_them(client, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **REFUSED[param])
    assert e.value.param == param, e.value.body
    # the neutral values of unsupported parameters are served
    assert chat(client, max_tokens=2, tools=[] if param == "tools" else openai.NOT_GIVEN,
                extra_body={"use_beam_search": False, "best_of": 1, "min_p": 0.0}).choices


def test_edge_values_are_served_or_refused_never_a_server_error(client):
    """Cases a fuzzer found: a choice that is only the end of turn, a penalty that rounds to 0 in float32."""
    r = chat(client, extra_body={"guided_choice": [""], "repetition_penalty": 0.01})
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("", "stop")
    r = chat(client, extra_body={"guided_regex": "[a-c]{4}", "repetition_penalty": 0.01}, top_p=5e-324)
    assert len(r.choices[0].message.content) == 4
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, extra_body={"repetition_penalty": 5e-324})
    assert e.value.param == "repetition_penalty"


def test_a_sampling_failure_ends_only_its_own_request(client, monkeypatch):
    from nemo_eagle.serve.engine.sampling import TokenSampler

    choose = TokenSampler.choose

    def broken(self, logits):
        if self.params.presence_penalty == 1.25:  # the marked request
            raise RuntimeError("injected")
        return choose(self, logits)

    monkeypatch.setattr(TokenSampler, "choose", broken)
    other = chat(client, max_tokens=800, stream=True, logprobs=True, extra_body={"min_tokens": 800})
    chunks = [next(iter(other))]
    with pytest.raises(openai.APIStatusError) as e:
        chat(client, presence_penalty=1.25)
    assert e.value.status_code >= 500 and "injected" in str(e.value.body)
    chunks += list(other)  # the neighbour runs to its end (an error event would raise here)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert sum(len(c.choices[0].logprobs.content) for c in chunks if c.choices and c.choices[0].logprobs) == 800
