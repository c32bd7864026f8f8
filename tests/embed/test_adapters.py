"""LangChain-style Embeddings and the colpali-engine calling convention over the same embedder."""

from __future__ import annotations

import asyncio

import pytest
import torch

from nemo_eagle.embed.adapters import ColEagleModel, ColEagleProcessor, EagleEmbeddings


def test_langchain_embeddings(single_embedder, multi_embedder):
    lc = EagleEmbeddings(single_embedder, dimensions=16)
    docs = lc.embed_documents(["first passage", "second passage"])
    query = lc.embed_query("which passage?")
    assert len(docs) == 2 and all(isinstance(x, float) for x in docs[0]) and len(query) == 16
    want = single_embedder.embed(["first passage", "second passage"], "passage", dimensions=16)
    torch.testing.assert_close(torch.tensor(docs), want)
    torch.testing.assert_close(torch.tensor(asyncio.run(lc.aembed_query("which passage?"))), torch.tensor(query))
    assert lc.embed_documents([]) == []
    try:  # when langchain-core is installed the class is a real LangChain Embeddings
        from langchain_core.embeddings import Embeddings
    except ImportError:
        pass
    else:
        assert isinstance(lc, Embeddings)
    with pytest.raises(ValueError, match="single-vector"):
        EagleEmbeddings(multi_embedder)


def test_colpali_style_interface(multi_embedder, pages, single_embedder):
    processor, model = ColEagleProcessor(multi_embedder), ColEagleModel(multi_embedder).eval()
    images = model(**processor.process_images(pages[:3]))
    queries = model(**processor.process_queries(["red page", "a longer query about the blue page"]))
    assert images.dim() == 3 and images.shape[0] == 3 and queries.shape[0] == 2
    scores = processor.score_multi_vector(queries, images)
    lists = multi_embedder.score(multi_embedder.embed_queries(["red page", "a longer query about the blue page"]),
                                 multi_embedder.embed_documents(pages[:3]))
    torch.testing.assert_close(scores, lists, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(processor.score_multi_vector(list(queries), list(images), batch_size=1), scores)
    with pytest.raises(ValueError, match="multi-vector embedder"):
        ColEagleProcessor(single_embedder)
