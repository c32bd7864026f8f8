"""`nemo-eagle index` on a folder with broken files: skipped, counted and named (or a stop naming the file), and
in-process stores refused where index and search cannot share them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from nemo_eagle.embed.cli import index_main, search_main

DATA = Path(__file__).parent / "data" / "vidore_tiny"


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name in ("doc0.png", "doc1.png"):
        shutil.copy(DATA / "images" / name, root / name)
    Image.new("RGB", (300, 200), "red").save(root / "whole.png")
    full = (root / "whole.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])  # decodes its header, fails on the pixels
    (root / "notanimage.jpg").write_text("hello")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    return root


def test_bad_files_are_skipped_counted_and_named(tiny_ckpt, corpus, tmp_path, capsys):
    pytest.importorskip("qdrant_client", reason="the retrieval extra is not installed")
    pytest.importorskip("pypdfium2", reason="the retrieval extra is not installed")
    db = str(tmp_path / "db")
    assert index_main(["--model", str(tiny_ckpt), "--input", str(corpus), "--db", db, "--max-tiles", "1",
                       "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped 3 unreadable" in err
    for name in ("truncated.png", "notanimage.jpg", "broken.pdf"):
        assert name in err
    from nemo_eagle.embed.store import open_store

    store = open_store(db)
    try:
        assert store.count() == 3  # doc0, doc1, whole
    finally:
        store.close()


def test_on_bad_file_error_names_the_truncated_image(tiny_ckpt, corpus, tmp_path, capsys):
    (corpus / "notanimage.jpg").unlink()
    (corpus / "broken.pdf").unlink()
    assert index_main(["--model", str(tiny_ckpt), "--input", str(corpus), "--db", str(tmp_path / "db"),
                       "--max-tiles", "1", "--no-progress", "--on-bad-file", "error"]) == 2
    err = capsys.readouterr().err
    assert "truncated.png" in err and "truncated" in err.split("truncated.png", 1)[1]
    assert "--on-bad-file skip" in err


@pytest.mark.parametrize("db", ["memory://", ":memory:", "memory://?collection=x"])
def test_in_process_stores_are_refused_by_index_and_search(tiny_ckpt, corpus, db, capsys):
    assert index_main(["--model", str(tiny_ckpt), "--input", str(corpus), "--db", db]) == 2
    assert "keeps vectors only inside one process" in capsys.readouterr().err
    assert search_main(["--model", str(tiny_ckpt), "--db", db, "q"]) == 2
    assert "keeps vectors only inside one process" in capsys.readouterr().err
