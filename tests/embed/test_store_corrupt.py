"""A damaged embedded Qdrant folder is one clear error naming the folder and the fix, never an empty result with
exit code 0 (a 0-byte storage file used to read as an empty collection) and never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_eagle.embed.cli import index_main, search_main

DATA = Path(__file__).parent / "data" / "vidore_tiny"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built_db(tiny_ckpt, tmp_path_factory) -> Path:
    """A real index of the tiny ViDoRe images, built once by `nemo-eagle index`."""
    db = tmp_path_factory.mktemp("store") / "pages.qdrant"
    assert index_main(["--model", str(tiny_ckpt), "--input", str(DATA / "images"), "--db", str(db),
                       "--max-tiles", "1", "--no-progress"]) == 0
    return db


def _storage(db: Path) -> Path:
    return db / "collection" / "pages" / "storage.sqlite"


CORRUPTIONS = {
    "0-byte sqlite": lambda db: _storage(db).write_bytes(b""),
    "garbage sqlite": lambda db: _storage(db).write_bytes(b"not a database " * 500),
    "sqlite missing": lambda db: _storage(db).unlink(),
    "collection folder missing": lambda db: shutil.rmtree(db / "collection"),
    "meta.json garbage": lambda db: (db / "meta.json").write_text("{not json"),
    "meta.json 0 bytes": lambda db: (db / "meta.json").write_bytes(b""),
    "meta.json missing": lambda db: (db / "meta.json").unlink(),
}


def search(tiny_ckpt, db: Path | str, capsys) -> tuple[int, str, str]:
    code = search_main(["--model", str(tiny_ckpt), "--db", str(db), "--top-k", "2", "revenue"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_intact_store_searches(built_db, tiny_ckpt, tmp_path, capsys):
    db = shutil.copytree(built_db, tmp_path / "db")
    code, out, _ = search(tiny_ckpt, db, capsys)
    assert code == 0 and len(json.loads(out)["results"]) == 2


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_damaged_store_is_one_clear_error(built_db, tiny_ckpt, tmp_path, capsys, name):
    db = shutil.copytree(built_db, tmp_path / "db")
    CORRUPTIONS[name](db)
    before = sorted((p.relative_to(db), p.stat().st_size) for p in db.rglob("*") if p.is_file())
    code, out, err = search(tiny_ckpt, db, capsys)
    assert code == 2 and not out, (code, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(db) in err and "damaged" in err and "re-run `nemo-eagle index`" in err, err
    # the check reads only: the damaged files are left as they were (to be looked at, or removed)
    assert sorted((p.relative_to(db), p.stat().st_size) for p in db.rglob("*") if p.is_file()) == before
    # index refuses it the same way rather than writing pages into a half-store
    code = index_main(["--model", str(tiny_ckpt), "--input", str(DATA / "images"), "--db", str(db), "--max-tiles",
                       "1", "--no-progress"])
    assert code == 2 and "damaged" in capsys.readouterr().err


def test_missing_collection_and_empty_folder(built_db, tiny_ckpt, tmp_path, capsys):
    db = shutil.copytree(built_db, tmp_path / "db")
    code, _, err = search(tiny_ckpt, f"{db}?collection=other", capsys)
    assert code == 2 and "no collection 'other'" in err and "run `nemo-eagle index`" in err, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = search(tiny_ckpt, empty, capsys)
    assert code == 2 and "run `nemo-eagle index`" in err, err


def test_not_a_store_is_refused_without_advice_to_delete(tiny_ckpt, tmp_path, capsys):
    docs = tmp_path / "my-documents"
    docs.mkdir()
    (docs / "report.txt").write_text("keep me")
    code, _, err = search(tiny_ckpt, docs, capsys)
    assert code == 2 and "not an embedded Qdrant store" in err and "remove" not in err, err
    assert (docs / "report.txt").read_text() == "keep me"


def test_zero_byte_storage_through_the_command_line(built_db, tiny_ckpt, tmp_path):
    db = shutil.copytree(built_db, tmp_path / "db")
    _storage(db).write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "nemo_eagle.cli", "search", "--model", str(tiny_ckpt), "--db",
                           str(db), "revenue"], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0 and not proc.stdout, proc
    assert "0 bytes" in proc.stderr and "re-run `nemo-eagle index`" in proc.stderr and "Traceback" not in proc.stderr
