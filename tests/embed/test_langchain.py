"""EagleEmbeddings as LangChain sees it: LangChain's own standard test classes, its vector store, and the vectors
compared with ``EagleEmbedder`` run in-process."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("langchain_core", reason="LangChain's interface needs langchain-core (the retrieval extra)")
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from nemo_eagle.embed import EagleEmbedder
from nemo_eagle.embed.adapters import EagleEmbeddings

pytestmark = pytest.mark.anyio  # runs the standard classes' async tests


class _OnTheTinyCheckpoint:
    """LangChain's standard classes build the model as ``EagleEmbeddings(**embedding_model_params)``."""

    @pytest.fixture(autouse=True)
    def _checkpoint(self, tiny_ckpt):
        self.checkpoint = str(tiny_ckpt)

    @property
    def embeddings_class(self) -> type[EagleEmbeddings]:
        return EagleEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": self.checkpoint, "device": "cpu", "model_kwargs": {"max_tiles": 1}}


class TestEagleEmbeddingsStandardUnit(_OnTheTinyCheckpoint, EmbeddingsUnitTests):
    pass


class TestEagleEmbeddingsStandardIntegration(_OnTheTinyCheckpoint, EmbeddingsIntegrationTests):
    pass


@pytest.fixture(scope="module")
def lc(tiny_ckpt):
    return EagleEmbeddings(model=str(tiny_ckpt), model_kwargs={"max_tiles": 1})


def test_built_from_a_checkpoint_matches_the_embedder(lc, single_embedder):
    assert isinstance(lc, Embeddings) and lc.embedder.mode == "single"
    texts = ["first passage", "a second, longer passage about charts"]
    torch.testing.assert_close(torch.tensor(lc.embed_documents(texts)), single_embedder.embed(texts, "passage"))
    torch.testing.assert_close(torch.tensor(lc.embed_query("which passage?")),
                               single_embedder.embed(["which passage?"], "query")[0])


def test_prebuilt_embedder_dimensions_and_images(single_embedder, pages):
    lc = EagleEmbeddings(embedder=single_embedder, dimensions=16)
    docs = lc.embed_documents(["first passage", pages[0], (pages[1], "caption")])
    assert len(docs) == 3 and all(len(d) == 16 and isinstance(d[0], float) for d in docs)
    want = single_embedder.embed(["first passage", pages[0], (pages[1], "caption")], "passage", dimensions=16)
    torch.testing.assert_close(torch.tensor(docs), want)
    assert lc.embedder is single_embedder and lc.embed_documents([]) == []


def test_empty_text_is_embedded_as_its_prefix(lc, single_embedder):
    # LangChain's integrations return a vector for "" (OpenAI's embeds it, sentence-transformers too), not an error.
    # The reference: an embedder without prefixes, given the prefix itself as the text.
    bare = EagleEmbedder(single_embedder.model, single_embedder.processor,
                         replace(single_embedder.config, query_prefix="", passage_prefix=""))
    want_q = bare.embed([single_embedder.config.query_prefix], "query")[0]
    want_p = bare.embed([single_embedder.config.passage_prefix], "passage")[0]
    torch.testing.assert_close(torch.tensor(lc.embed_query("")), want_q)
    docs = lc.embed_documents(["", "real text", ""])
    torch.testing.assert_close(torch.tensor(docs[0]), want_p)
    torch.testing.assert_close(torch.tensor(docs[2]), want_p)
    torch.testing.assert_close(torch.tensor(docs[1]), single_embedder.embed(["real text"], "passage")[0])
    assert abs(float(torch.tensor(lc.embed_query("   ")).norm()) - 1) < 1e-5  # blank: embedded, unit length
    assert not torch.allclose(torch.tensor(lc.embed_query("")), torch.tensor(docs[0]))  # query != passage prefix


def test_langchain_vector_store_ranks_by_our_scores(lc, single_embedder):
    texts = ["a red car", "the blue sky at noon", "quarterly revenue table", "a cat on a mat"]
    store = InMemoryVectorStore.from_texts(texts, embedding=lc)
    hits = store.similarity_search_with_score("revenue in 2023", k=4)
    q = single_embedder.embed(["revenue in 2023"], "query")
    d = single_embedder.embed(texts, "passage")
    ours = single_embedder.score(q, d)[0]  # unit vectors: the dot product is the cosine LangChain computes
    assert [h.page_content for h, _ in hits] == [texts[i] for i in torch.argsort(ours, descending=True).tolist()]
    torch.testing.assert_close(torch.tensor([s for _, s in hits]), ours.sort(descending=True).values, atol=1e-5,
                               rtol=1e-5)


def test_construction_errors_are_clear(tiny_ckpt, single_embedder, multi_embedder):
    with pytest.raises(ValueError, match="pass model="):
        EagleEmbeddings()
    with pytest.raises(ValueError, match="only mode='single'"):
        EagleEmbeddings(model=str(tiny_ckpt), mode="multi")
    with pytest.raises(ValueError, match="single-vector"):
        EagleEmbeddings(embedder=multi_embedder)
    with pytest.raises(ValueError, match="not both"):
        EagleEmbeddings(model=str(tiny_ckpt), embedder=single_embedder)
    with pytest.raises(ValueError, match="truncate must be one of"):
        EagleEmbeddings(embedder=single_embedder, truncate="MIDDLE")
    with pytest.raises(ValueError, match="dimensions must be an integer"):
        EagleEmbeddings(embedder=single_embedder, dimensions=10_000)
    with pytest.raises(ValueError, match="extra"):
        EagleEmbeddings(embedder=single_embedder, pooling="mean")  # belongs in model_kwargs
