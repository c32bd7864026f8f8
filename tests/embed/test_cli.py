"""`nemo-eagle embed | search | eval-retrieval` end to end on the tiny checkpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_eagle.embed.cli import embed_main, eval_main, index_main, search_main

DATA = Path(__file__).parent / "data" / "vidore_tiny"


def test_embed_cli_json(tiny_ckpt, capsys, single_embedder):
    img = DATA / "images" / "doc1.png"
    assert embed_main(["--model", str(tiny_ckpt), "--max-tiles", "1", "--dimensions", "8", "hello world",
                       "--image", str(img)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["index"] for d in out["data"]] == [0, 1] and out["usage"]["prompt_tokens"] > 256
    vecs = torch.tensor([d["embedding"] for d in out["data"]])
    assert vecs.shape == (2, 8)
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(2))
    want = single_embedder.embed(["hello world", img], "passage", dimensions=8)
    torch.testing.assert_close(vecs, want, atol=1e-5, rtol=1e-4)

    assert embed_main(["--model", str(tiny_ckpt), "--input-type", "query", "--encoding-format", "base64", "hi"]) == 0
    data = json.loads(capsys.readouterr().out)["data"][0]["embedding"]
    decoded = torch.from_numpy(np.frombuffer(base64.b64decode(data), dtype="<f4").copy())
    torch.testing.assert_close(decoded, single_embedder.embed_queries(["hi"])[0], atol=1e-5, rtol=1e-4)


def test_cli_errors_are_messages_not_tracebacks(tiny_ckpt, tmp_path, capsys):
    assert (
        embed_main(["--model", str(tiny_ckpt), "--input-type", "query", "--image", str(DATA / "images" / "doc0.png")])
        == 2
    )
    assert "only accepted with input_type='passage'" in capsys.readouterr().err
    assert search_main(["--model", str(tiny_ckpt), "--db", str(tmp_path / "empty"), "q"]) == 2
    assert "run `nemo-eagle index` first" in capsys.readouterr().err
    assert index_main(["--model", str(tiny_ckpt), "--input", str(tmp_path / "nothing"), "--db", "memory://"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_index_then_search_and_rerank(tiny_ckpt, tmp_path, capsys, single_embedder, multi_embedder):
    db = str(tmp_path / "db") + "?collection=docs"
    assert index_main(["--model", str(tiny_ckpt), "--input", str(DATA / "images"), "--db", db, "--max-tiles", "1",
                       "--no-progress"]) == 0
    capsys.readouterr()
    query = "quarterly revenue chart"
    assert search_main(["--model", str(tiny_ckpt), "--db", db, "--top-k", "3", query]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in plain["results"]] == [1, 2, 3] and not plain["reranked"]
    # The same ranking as embedding everything here and scoring by hand.
    files = sorted((DATA / "images").glob("*.png"))
    scores = single_embedder.score(single_embedder.embed_queries([query]), single_embedder.embed_documents(files))[0]
    want = [files[i].name for i in torch.argsort(scores, descending=True)[:3].tolist()]
    assert [r["key"] for r in plain["results"]] == want
    assert [r["score"] for r in plain["results"]] == pytest.approx(sorted(scores.tolist(), reverse=True)[:3], abs=1e-4)

    assert search_main(["--model", str(tiny_ckpt), "--db", db, "--top-k", "2", "--rerank", "--rerank-depth", "4",
                        "--projection-dim", "32", "--bidirectional", "--max-tiles", "1", query]) == 2
    assert "other embedder settings" in capsys.readouterr().err  # vector settings must match the index
    assert search_main(["--model", str(tiny_ckpt), "--db", db, "--top-k", "2", "--rerank", "--rerank-depth", "4",
                        "--max-tiles", "1", query]) == 0
    reranked = json.loads(capsys.readouterr().out)
    assert reranked["reranked"] and len(reranked["results"]) == 2
    assert all("retrieval_score" in r for r in reranked["results"])
    # The reranker is the multi-vector (MaxSim) view of the same checkpoint: check its order by hand.
    from nemo_eagle.embed import EagleEmbedder

    reranker = EagleEmbedder.from_pretrained(tiny_ckpt, mode="multi", max_tiles=1)
    logits = reranker.score(reranker.embed_queries([query]), reranker.embed_documents(files))[0]
    assert [r["key"] for r in reranked["results"]] == [
        files[i].name for i in torch.argsort(logits, descending=True)[:2]
    ]


def test_eval_retrieval_on_fixture(tiny_ckpt, tmp_path, capsys, single_embedder):
    out_file = tmp_path / "metrics.json"
    assert eval_main(["--model", str(tiny_ckpt), "--data", str(DATA), "--max-tiles", "1", "--k", "1,3",
                      "--output", str(out_file)]) == 0
    report = json.loads(out_file.read_text())
    assert report == json.loads(capsys.readouterr().out)
    assert report["num_queries"] == 3 and report["num_documents"] == 7
    m = report["metrics"]
    assert set(m) == {f"{n}@{k}" for n in ("ndcg", "recall", "mrr") for k in (1, 3)}
    # recall@k recomputed here from the embedder's scores, without the package's metric code.
    from nemo_eagle.embed.vidore import load_dataset

    ds = load_dataset(DATA)
    ids = list(ds.corpus)
    qids = ["q0", "q1", "q2"]
    scores = single_embedder.score(single_embedder.embed_queries([ds.queries[q] for q in qids]),
                                   single_embedder.embed_documents([ds.corpus[c] for c in ids], truncate="END"))
    for k in (1, 3):
        recalls = []
        for i, q in enumerate(qids):
            top = {ids[j] for j in torch.argsort(scores[i], descending=True)[:k].tolist()}
            relevant = set(ds.qrels[q])
            recalls.append(len(top & relevant) / len(relevant))
        assert m[f"recall@{k}"] == pytest.approx(sum(recalls) / len(recalls))
