"""Retrieval metrics against hand-computed values, and ViDoRe-format loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nemo_eagle.embed.vidore import evaluate, load_dataset, mrr_at_k, ndcg_at_k, recall_at_k

DATA = Path(__file__).parent / "data" / "vidore_tiny"


def test_metrics_by_hand():
    ranked = ["a", "b", "c", "d"]
    rel = {"b": 2, "d": 1, "z": 1}  # z is relevant but never retrieved
    # DCG@4 = 2/log2(3) + 1/log2(5); IDCG@4 = 2/log2(2) + 1/log2(3) + 1/log2(4)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 + 1 / math.log2(3) + 0.5
    assert ndcg_at_k(ranked, rel, 4) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, rel, 1) == 0.0
    assert ndcg_at_k(["b"], {"b": 1}, 5) == 1.0
    assert recall_at_k(ranked, rel, 2) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, rel, 4) == pytest.approx(2 / 3)
    assert mrr_at_k(ranked, rel, 1) == 0.0 and mrr_at_k(ranked, rel, 10) == 0.5
    assert recall_at_k(ranked, {"a": 0}, 3) == 0.0  # score 0 is not relevant


def test_evaluate_averages_judged_queries():
    run = {"q1": ["x", "y"], "q2": ["y", "x"], "q3": ["x"]}
    qrels = {"q1": {"x": 1}, "q2": {"x": 1}, "q3": {"x": 0}}  # q3 has no relevant doc: skipped
    m = evaluate(run, qrels, ks=(1, 2))
    assert m["recall@1"] == 0.5 and m["recall@2"] == 1.0
    assert m["mrr@2"] == pytest.approx((1 + 0.5) / 2)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    with pytest.raises(ValueError, match="have no ranking"):
        evaluate({"q1": ["x"]}, qrels)


def test_load_fixture_and_beir_tsv(tmp_path):
    ds = load_dataset(DATA)
    assert len(ds.corpus) == 7 and len(ds.queries) == 4 and set(ds.qrels) == {"q0", "q1", "q2"}
    assert isinstance(ds.corpus["d0"], Path) and ds.corpus["t0"].startswith("Revenue")
    assert isinstance(ds.corpus["p0"], tuple) and ds.qrels["q2"] == {"p0": 2.0, "d0": 1.0}

    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "q"}\n')
    (tmp_path / "corpus.jsonl").write_text('{"_id": "c", "text": "doc"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\tc\t1\n")
    assert load_dataset(tmp_path).qrels == {"1": {"c": 1.0}}
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\tmissing\t1\n")
    with pytest.raises(ValueError, match="document 'missing', which corpus.jsonl lacks"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a ViDoRe-format dataset"):
        load_dataset(tmp_path / "qrels")
