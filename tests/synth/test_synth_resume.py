"""End to end: synth against the scripted teacher, killed twice with SIGKILL and resumed; outputs checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from nemo_eagle.synth.cli import main as synth_main
from nemo_eagle.synth.filters import REASONS

REPO = Path(__file__).resolve().parents[2]
TASKS = "caption,vqa,reasoning,chart_qa,ocr_qa"
K = 2  # samples per task
NUM_IMAGES = 11  # usable: 10 planned + the near-duplicate (the byte-identical copy and the broken file are not)

# Hand-counted from the script in conftest.py: per image, 5 tasks x 2 samples = 10 samples.
EXPECTED_BUCKETS = {
    "teacher_error": 10,  # "reject": HTTP 400 on every request
    "schema": 10,  # "bad-json": prose instead of JSON
    "length": 10,  # "short": caption "ok" (2) and questions "Why?" (8)
    "language": 10,  # "non-english": Cyrillic text
    "consistency": 8,  # "inconsistent": the verifier disagrees on 4 QA tasks x 2; its 2 captions are kept
    "dedup": 10,  # the near-duplicate of "plain-b" gets exactly plain-b's texts
    "pending": 0,
}
EXPECTED_KEPT = 10 * 5 + 2  # plain-a/b/c, flaky-429, flaky-503, + the 2 captions of "inconsistent"


def _args(root: Path, server_url: str, out: Path, *extra: str) -> list[str]:
    return ["--images", str(root), "--teacher-url", server_url, "--teacher-model", "fake-teacher", "--tasks", TASKS,
            "--out", str(out), "--samples-per-task", str(K), "--concurrency", "4", "--max-retries", "3",
            "--backoff", "0.01", "--seed", "7", *extra]


def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _run_and_kill(args: list[str], journal: Path, kill_after: int) -> int:
    """Start synth as a subprocess and SIGKILL it once the journal holds ``kill_after`` lines."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "nemo_eagle.synth.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _journal_lines(journal) < kill_after:
        if proc.poll() is not None:
            raise AssertionError(f"synth ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("journal did not grow")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    return _journal_lines(journal)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_killed_twice_then_resumed_gives_every_sample_once(teacher, tmp_path):
    server, script, root = teacher
    script.delay = 0.02  # slow enough for the kills to land mid-run
    out = tmp_path / "out"
    args = _args(root, server.url, out)
    total = NUM_IMAGES * 5 * K

    first = _run_and_kill(args, out / "journal.jsonl", kill_after=15)
    second = _run_and_kill(args, out / "journal.jsonl", kill_after=first + 25)
    assert 15 <= first < second < total, (first, second)
    assert synth_main(args) == 0

    journal = _read_jsonl(out / "journal.jsonl")
    ids = [r["id"] for r in journal]
    assert len(ids) == len(set(ids)) == total  # exactly once: no duplicates, no gaps

    card = json.loads((out / "data_card.json").read_text())
    s = card["samples"]
    assert s["expected"] == total
    assert s["kept"] + sum(s["removed"].values()) == total
    assert set(s["removed"]) == set(REASONS)
    assert s["removed"] == EXPECTED_BUCKETS
    assert s["kept"] == EXPECTED_KEPT
    assert card["images"] == {"found": 13, "unreadable": 1, "duplicate_files": 1, "used": NUM_IMAGES}
    for task, per in card["per_task"].items():
        assert per["expected"] == NUM_IMAGES * K
        assert per["kept"] + sum(per["removed"].values()) == per["expected"], task
    assert "expected = kept + removed: 110 = 52 + 58" in (out / "data_card.md").read_text()

    records = _read_jsonl(out / "data.jsonl")
    assert [r["id"] for r in records] == sorted({r["id"] for r in records}, key=[r["id"] for r in records].index)
    assert len({r["id"] for r in records}) == len(records) == EXPECTED_KEPT
    rejected = _read_jsonl(out / "rejected.jsonl")
    assert len(rejected) == total - EXPECTED_KEPT
    assert not {r["id"] for r in rejected} & {r["id"] for r in records}

    # A clean, uninterrupted run into another folder gives byte-identical data.
    ref = tmp_path / "ref"
    assert synth_main(_args(root, server.url, ref)) == 0
    assert (ref / "data.jsonl").read_bytes() == (out / "data.jsonl").read_bytes()
    assert sorted(p.name for p in (ref / "shards").iterdir()) == sorted(p.name for p in (out / "shards").iterdir())

    # The retries were exercised: 429 twice and 503 once before each success.
    assert any(r["attempt"] == 3 and r["label"] == "flaky-429" for r in script.requests)
    assert any(r["attempt"] == 2 and r["label"] == "flaky-503" for r in script.requests)


def test_outputs_are_llava_and_webdataset(teacher, tmp_path):
    server, script, root = teacher
    out = tmp_path / "out"
    assert synth_main(_args(root, server.url, out, "--shard-size", "20")) == 0
    records = _read_jsonl(out / "data.jsonl")
    assert json.loads((out / "data.json").read_text()) == records
    for r in records:
        assert set(r) == {"id", "image", "conversations"}
        assert not Path(r["image"]).is_absolute() and (out / r["image"]).is_file()
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
    reasoning = next(r for r in records if "-reasoning-" in r["id"])
    assert "\nAnswer: " in reasoning["conversations"][1]["value"]

    shards = sorted((out / "shards").glob("*.tar"))
    assert len(shards) == -(-len(records) // 20)
    import webdataset as wds

    seen = []
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        meta = json.loads(sample["json"])
        rec = records[len(seen)]
        assert sample["__key__"] == rec["id"] == meta["id"]
        assert meta["conversations"] == rec["conversations"]
        ext = Path(rec["image"]).suffix.lstrip(".")
        assert sample[ext] == (out / rec["image"]).read_bytes()
        seen.append(meta["id"])
    assert seen == [r["id"] for r in records]
    with tarfile.open(shards[0]) as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())


def test_cache_avoids_repeat_requests_and_api_key_is_sent(teacher, tmp_path):
    server, script, root = teacher
    out = tmp_path / "out"
    args = _args(root, server.url, out, "--api-key", "sekret")
    args[args.index("--tasks") + 1] = "vqa"
    assert synth_main(args) == 0
    assert script.requests and all(r["auth"] == "Bearer sekret" for r in script.requests)
    before = len(script.requests)
    (out / "journal.jsonl").unlink()  # forget the samples; the cache still has every successful reply
    assert synth_main(args) == 0
    # Only the 2 samples of "reject" are asked again: final errors are journaled, never cached.
    assert [r["label"] for r in script.requests[before:]] == ["reject", "reject"]
    assert _journal_lines(out / "journal.jsonl") == NUM_IMAGES * K


def test_retryable_failures_are_left_for_the_next_run(teacher, tmp_path):
    server, script, root = teacher
    out = tmp_path / "out"
    args = _args(root, server.url, out, "--max-retries", "0")
    args[args.index("--max-retries") + 1] = "0"
    assert synth_main(args) == 1  # flaky images fail without retries
    card = json.loads((out / "data_card.json").read_text())
    assert card["samples"]["removed"]["pending"] > 0
    assert card["samples"]["kept"] + sum(card["samples"]["removed"].values()) == card["samples"]["expected"]
    assert synth_main(args[:-2] + ["--max-retries", "3"]) == 0
    card = json.loads((out / "data_card.json").read_text())
    assert card["samples"]["removed"]["pending"] == 0 and card["samples"]["kept"] == EXPECTED_KEPT


def test_changed_settings_on_resume_are_refused(teacher, tmp_path, capsys):
    server, script, root = teacher
    out = tmp_path / "out"
    assert synth_main(_args(root, server.url, out, "--export-only")) == 0
    args = _args(root, server.url, out)
    args[args.index("--seed") + 1] = "8"
    assert synth_main(args) == 2
    assert "seed: was 7, now 8" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--tasks", "caption,poetry"], "unknown task(s) ['poetry']"),
    (["--samples-per-task", "0"], "--samples-per-task must be >= 1"),
    (["--language", "xx"], "unknown language 'xx'"),
])
def test_bad_options_are_named(tmp_path, capsys, bad, message):
    (tmp_path / "img").mkdir()
    args = _args(tmp_path / "img", "http://127.0.0.1:9/v1", tmp_path / "out")
    for i in range(0, len(bad), 2):
        if bad[i] in args:
            args[args.index(bad[i]) + 1] = bad[i + 1]
        else:
            args += bad[i:i + 2]
    assert synth_main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_images_folder_is_named(tmp_path, capsys):
    assert synth_main(_args(tmp_path / "nope", "http://127.0.0.1:9/v1", tmp_path / "out")) == 2
    assert "nope is not a directory" in capsys.readouterr().err
