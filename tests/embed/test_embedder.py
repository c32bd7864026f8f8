"""EagleEmbedder mechanics on the tiny checkpoint: normalisation, determinism, prefixes, self-retrieval, MaxSim,
Matryoshka truncation and bidirectional attention (checked against transformers' own bidirectional mask)."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import create_bidirectional_mask

from nemo_eagle.embed.scoring import l2_normalize


def _mixed_inputs(pages):
    return [pages[0], "quarterly revenue table", (pages[1], "a caption under the chart"), {"text": "plain dict"}]


def test_single_vectors_are_unit_length_and_deterministic(single_embedder, pages):
    a = single_embedder.embed(_mixed_inputs(pages), "passage")
    b = single_embedder.embed(_mixed_inputs(pages), "passage")
    assert a.shape == (4, single_embedder.model.config.llm.hidden_size) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4))
    assert torch.equal(a, b)


def test_batching_does_not_change_vectors(single_embedder, multi_embedder, pages):
    inputs = _mixed_inputs(pages)
    for emb in (single_embedder, multi_embedder):
        together = emb.embed(inputs, "passage", batch_size=4)
        alone = emb.embed(inputs, "passage", batch_size=1)
        for x, y in zip(together, alone):
            torch.testing.assert_close(x, y, atol=2e-5, rtol=1e-4)


def test_multi_vectors_are_per_token_and_unit_length(multi_embedder):
    text = "what is the revenue in 2023?"
    (vecs,) = multi_embedder.embed_queries([text])
    n_tokens = len(multi_embedder.processor.tokenizer.encode("query: " + text))
    assert vecs.shape == (n_tokens, 32)
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(n_tokens))


def test_query_and_passage_prefixes_differ(single_embedder):
    tok = single_embedder.processor.tokenizer
    text = "net income by segment"
    q = single_embedder.prepare([text], "query")
    p = single_embedder.prepare([text], "passage")
    assert q.input_ids[0, : q.num_tokens[0]].tolist() == tok.encode("query: " + text)
    assert p.input_ids[0, : p.num_tokens[0]].tolist() == tok.encode("passage: " + text)
    vq = single_embedder.embed_queries([text])
    vp = single_embedder.embed_documents([text])
    assert (vq - vp).abs().max() > 1e-3


def test_images_only_as_passages(single_embedder, pages):
    with pytest.raises(ValueError, match="only accepted with input_type='passage'"):
        single_embedder.embed([pages[0]], "query")
    with pytest.raises(ValueError, match="input_type must be one of"):
        single_embedder.embed(["x"], "document")
    with pytest.raises(ValueError, match="input 1 is empty"):
        single_embedder.embed(["ok", "   "], "passage")


@pytest.mark.parametrize("which", ["single_embedder", "multi_embedder"])
def test_image_queried_with_itself_ranks_first(which, pages, request):
    emb = request.getfixturevalue(which)
    docs = emb.embed_documents(pages)
    scores = emb.score(docs, docs)
    assert scores.argmax(dim=1).tolist() == list(range(len(pages)))
    ranking = emb.rank({"text": "unused"}, ["a", "b"])  # the /v1/ranking shape works
    assert sorted(r["index"] for r in ranking) == [0, 1] and ranking[0]["logit"] >= ranking[1]["logit"]


def test_maxsim_equals_brute_force(multi_embedder, pages):
    queries = multi_embedder.embed_queries(["revenue 2023", "a much longer question about the chart"])
    docs = multi_embedder.embed_documents([pages[0], "short text", (pages[2], "caption")])
    got = multi_embedder.score(queries, docs)
    want = torch.zeros(len(queries), len(docs))
    for i, q in enumerate(queries):
        for j, d in enumerate(docs):
            want[i, j] = sum(max(float(qt @ dt) for dt in d) for qt in q)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_dimensions_truncate_and_renormalise(single_embedder, multi_embedder, pages):
    inputs = ["alpha", (pages[3], "beta")]
    full = single_embedder.embed(inputs, "passage")
    short = single_embedder.embed(inputs, "passage", dimensions=16)
    assert short.shape == (2, 16)
    torch.testing.assert_close(short.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(short, full[:, :16] / full[:, :16].norm(dim=-1, keepdim=True))
    multi = multi_embedder.embed(inputs, "passage", dimensions=8)
    assert all(m.shape[1] == 8 for m in multi)
    torch.testing.assert_close(multi[0].norm(dim=-1), torch.ones(multi[0].shape[0]))
    for bad in (0, 65, 2.5):
        with pytest.raises(ValueError, match="dimensions must be an integer"):
            single_embedder.embed(inputs, "passage", dimensions=bad)


# ------------------------------------------------------------------------------------- bidirectional attention
def _decoder_states(emb, text: str, **kw) -> torch.Tensor:
    return emb.hidden_states(emb.prepare([text], "passage", **kw))[0]


def test_causal_first_token_ignores_the_future_bidirectional_does_not(tiny_ckpt):
    from nemo_eagle.embed import EagleEmbedder

    causal = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single")
    bidir = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single", bidirectional=True)
    a, b = "passage one ends here", "passage one ends THERE"
    with torch.no_grad():
        ca, cb = _decoder_states(causal, a), _decoder_states(causal, b)
        ba, bb = _decoder_states(bidir, a), _decoder_states(bidir, b)
    n = 4  # the shared "passage:" prefix tokens
    torch.testing.assert_close(ca[:n], cb[:n])  # causal: earlier tokens never see later ones
    assert (ba[:n] - bb[:n]).abs().max() > 1e-4  # bidirectional: they do


def test_bidirectional_matches_transformers_mask_and_is_causal_flip(tiny_ckpt):
    """Our 4-D bias == transformers' create_bidirectional_mask (padded batch), == flipping is_causal (no padding),
    and eager == SDPA."""
    from nemo_eagle.embed import EagleEmbedder

    emb = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single", bidirectional=True)
    batch = emb.prepare(["short one", "a noticeably longer second passage to force padding"], "passage")
    assert not bool(batch.attention_mask.all())
    decoder = emb.model.language_model.model
    with torch.no_grad():
        ours = emb.hidden_states(batch)
        embeds = emb.model.embed_inputs(batch.input_ids)
        ref_mask = create_bidirectional_mask(config=decoder.config, inputs_embeds=embeds,
                                             attention_mask=batch.attention_mask, allow_is_bidirectional_skip=False)
        ref = decoder(inputs_embeds=embeds, attention_mask=ref_mask, position_ids=None).last_hidden_state
        real = batch.attention_mask.bool()
        torch.testing.assert_close(ours[real], ref[real], atol=1e-5, rtol=1e-5)

        # One unpadded sequence: SDPA with is_causal flipped off on every attention layer is the bidirectional model.
        single = emb.prepare(["a noticeably longer second passage to force padding"], "passage")
        ours_single = emb.hidden_states(single)
        layers = [m for m in decoder.modules() if hasattr(m, "is_causal")]
        try:
            for m in layers:
                m.is_causal = False
            flipped = decoder(inputs_embeds=emb.model.embed_inputs(single.input_ids)).last_hidden_state
        finally:
            for m in layers:
                m.is_causal = True
        torch.testing.assert_close(ours_single, flipped, atol=1e-5, rtol=1e-5)
        # The padded row equals the same text alone: padding is invisible.
        torch.testing.assert_close(ours[1][real[1]], ours_single[0], atol=1e-5, rtol=1e-5)

    eager = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single", bidirectional=True, attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(eager.hidden_states(batch)[real], ours[real], atol=1e-5, rtol=1e-5)


def test_last_token_pooling_picks_the_last_real_token(tiny_ckpt):
    from nemo_eagle.embed import EagleEmbedder

    emb = EagleEmbedder.from_pretrained(tiny_ckpt, mode="single", pooling="last")
    texts = ["tiny", "a longer text that pads the first one"]
    batch = emb.prepare(texts, "query")
    with torch.no_grad():
        hidden = emb.hidden_states(batch)
    got = emb.embed(texts, "query")
    for i, n in enumerate(batch.num_tokens):
        torch.testing.assert_close(got[i], l2_normalize(hidden[i, n - 1].float()), atol=1e-5, rtol=1e-5)


def test_save_and_reload_keeps_vectors(tiny_ckpt, tmp_path):
    from nemo_eagle.embed import EagleEmbedder

    emb = EagleEmbedder.from_pretrained(tiny_ckpt, mode="multi", projection_dim=32, bidirectional=True)
    with torch.no_grad():  # a "trained" head: not the seeded initial one, so reloading must read the file
        emb.projection.weight.add_(0.5 * torch.randn_like(emb.projection.weight))
    before = emb.embed_queries(["persisted?"])
    emb.save_pretrained(tmp_path / "ckpt")
    again = EagleEmbedder.from_pretrained(tmp_path / "ckpt")
    assert again.mode == "multi" and again.config.bidirectional and again.dim == 32
    torch.testing.assert_close(again.embed_queries(["persisted?"])[0], before[0])
    fresh = EagleEmbedder.from_pretrained(tiny_ckpt, mode="multi", projection_dim=32, bidirectional=True)
    assert (fresh.embed_queries(["persisted?"])[0] - before[0]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="projection"):
        EagleEmbedder.from_pretrained(tmp_path / "ckpt", projection_dim=16)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["single", "multi"])
def test_cuda_bf16_matches_cpu_fp32(tiny_ckpt, pages, mode):
    from nemo_eagle.embed import EagleEmbedder

    inputs = [pages[0], "a text passage", (pages[1], "caption")]
    cpu = EagleEmbedder.from_pretrained(tiny_ckpt, mode=mode, max_tiles=1, bidirectional=mode == "multi")
    gpu = EagleEmbedder.from_pretrained(tiny_ckpt, mode=mode, max_tiles=1, bidirectional=mode == "multi",
                                        dtype=torch.bfloat16, device="cuda")
    for a, b in zip(cpu.embed(inputs, "passage"), gpu.embed(inputs, "passage")):
        assert b.dtype == torch.float32 and b.device.type == "cpu"
        cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
        assert float(cos.min()) > 0.98, cos


def test_wrapping_a_loaded_model(single_embedder):
    from nemo_eagle.embed import EagleEmbedder

    again = EagleEmbedder(single_embedder.model, max_tiles=1)  # processor from the model's checkpoint
    torch.testing.assert_close(again.embed_queries(["same weights"]), single_embedder.embed_queries(["same weights"]))
    with pytest.raises(ValueError, match="mode must be one of"):
        EagleEmbedder(single_embedder.model, mode="sparse")
