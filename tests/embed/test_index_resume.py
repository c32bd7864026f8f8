"""`nemo-eagle index` survives kill -9: rerun it and every one of 200 pages is stored exactly once."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from nemo_eagle.embed.cli import index_main
from nemo_eagle.embed.store import open_store, point_id

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES, NUM_PDF_PAGES = 176, 24


def _make_corpus(root: Path, page_factory) -> list[str]:
    (root / "scans" / "b").mkdir(parents=True)
    keys = []
    for i in range(NUM_IMAGES):
        rel = f"scans/{'b/' if i % 3 == 0 else ''}page{i:03d}.png"
        page_factory(i, size=(24, 32)).save(root / rel)
        keys.append(rel)
    pdf_pages = [page_factory(500 + i, size=(24, 32)) for i in range(NUM_PDF_PAGES)]
    pdf_pages[0].save(root / "report.pdf", save_all=True, append_images=pdf_pages[1:])
    keys += [f"report.pdf#page={n}" for n in range(1, NUM_PDF_PAGES + 1)]
    (root / "notes.txt").write_text("not a page")
    return keys


def _stored_keys(db: str) -> list[str]:
    store = open_store(db)
    try:
        return [payload["key"] for _, payload in store.payloads()] if store.exists() else []
    finally:
        store.close()


def test_index_kill_and_resume_stores_every_page_once(tmp_path, tiny_ckpt, page_factory, caplog):
    keys = _make_corpus(tmp_path / "corpus", page_factory)
    assert len(keys) == 200
    db = str(tmp_path / "db")
    args = ["--model", str(tiny_ckpt), "--input", str(tmp_path / "corpus"), "--db", db, "--max-tiles", "1",
            "--batch-size", "16", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "nemo_eagle.cli", "index", *args], cwd=REPO, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen, deadline, done = [], time.monotonic() + 240, 0
    try:
        for line in proc.stderr:  # wait until a good part is stored, then kill -9 mid-run
            seen.append(line)
            m = re.search(r"indexed (\d+)/200 pages", line)
            if m and int(m.group(1)) >= 48:
                done = int(m.group(1))
                break
            assert time.monotonic() < deadline, "indexer too slow:\n" + "".join(seen[-20:])
        assert done, "indexer ended before reaching 48 pages:\n" + "".join(seen[-20:])
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    partial = _stored_keys(db)
    assert done <= len(partial) < 200, f"killed after {done} pages, the store holds {len(partial)}"
    assert len(set(partial)) == len(partial)

    with caplog.at_level(logging.INFO, logger="nemo_eagle"):
        assert index_main(args) == 0
    assert any(f"{len(partial)} already in" in r.getMessage() for r in caplog.records)

    stored = _stored_keys(db)
    assert sorted(stored) == sorted(keys)  # every page, exactly once, nothing else (notes.txt is no page)
    store = open_store(db)
    try:
        assert store.count() == 200
        assert store.existing_ids([point_id(k) for k in keys]) == {point_id(k) for k in keys}
    finally:
        store.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nemo_eagle"):
        assert index_main(args) == 0  # a third run has nothing to do
    assert any("200 already in" in r.getMessage() and "0 to embed" in r.getMessage() for r in caplog.records)
    assert len(_stored_keys(db)) == 200
