"""The synth run: scan images, ask the teacher for every (image, task, index) not yet journaled, then filter and export.

Sample ids are ``<image sha256[:16]>-<task>-<index>``, so a restart recomputes the same ids and skips those
already in ``journal.jsonl``. Export always reruns from the whole journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from nemo_eagle.synth.export import KeptSample, copy_images, write_card, write_llava, write_shards
from nemo_eagle.synth.filters import REASONS, Deduper, FilterConfig, check_sample
from nemo_eagle.synth.imagehash import HASHES
from nemo_eagle.synth.journal import Journal, atomic_write_json, atomic_write_text, read_journal
from nemo_eagle.synth.tasks import TASKS, SchemaError, TaskTemplate
from nemo_eagle.synth.teacher import ResponseCache, TeacherClient, TeacherError, cache_key, image_data_url

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# Settings that decide what a sample is; a resumed run must use the same ones.
_IDENTITY = ("teacher_model", "tasks", "samples_per_task", "seed", "temperature", "max_tokens", "verify")


@dataclass(kw_only=True)
class SynthSettings:
    images: Path
    out: Path
    teacher_url: str
    teacher_model: str
    tasks: list[str]
    samples_per_task: int = 1
    seed: int = 0
    temperature: float = 0.7
    max_tokens: int = 1024
    verify: bool = True
    concurrency: int = 8
    max_retries: int = 5
    rate_limit: float = 0.0
    timeout: float = 120.0
    backoff: float = 0.5
    api_key: str | None = None
    cache_dir: Path | None = None
    retry_errors: bool = False
    shard_size: int = 1000
    image_hash: str = "dhash"
    filters: FilterConfig = field(default_factory=FilterConfig)

    def identity(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in _IDENTITY}
        d["templates"] = {t: TASKS[t].fingerprint for t in self.tasks}
        return d


@dataclass(frozen=True)
class SourceImage:
    rel: str  # posix path relative to the images folder
    path: Path
    sha256: str

    @property
    def key(self) -> str:
        return self.sha256[:16]

    @property
    def out_rel(self) -> str:
        return f"images/{self.key}{self.path.suffix.lower()}"


@dataclass(frozen=True)
class Job:
    id: str
    image: SourceImage
    task: TaskTemplate
    index: int


def scan_images(root: Path) -> tuple[list[SourceImage], dict[str, int]]:
    """Readable images under ``root`` (recursive, sorted), one per distinct content."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    stats = Counter(found=len(files), unreadable=0, duplicate_files=0)
    seen: dict[str, str] = {}
    images = []
    for p in files:
        data = p.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
        except Exception as e:  # PIL raises many types for broken files
            log.warning("skipping unreadable image %s (%s)", p, e)
            stats["unreadable"] += 1
            continue
        sha = hashlib.sha256(data).hexdigest()
        rel = p.relative_to(root).as_posix()
        if sha in seen:
            log.info("%s has the same bytes as %s; using it once", rel, seen[sha])
            stats["duplicate_files"] += 1
            continue
        seen[sha] = rel
        images.append(SourceImage(rel=rel, path=p, sha256=sha))
    stats["used"] = len(images)
    return images, dict(stats)


def plan_jobs(images: list[SourceImage], tasks: list[TaskTemplate], samples_per_task: int) -> list[Job]:
    return [Job(f"{img.key}-{t.name}-{k}", img, t, k) for img in images for t in tasks for k in range(samples_per_task)]


def _check_identity(out: Path, settings: SynthSettings) -> None:
    run_file = out / "run.json"
    ident = settings.identity()
    if run_file.exists():
        before = json.loads(run_file.read_text())
        diff = {k: (before.get(k), v) for k, v in ident.items() if before.get(k) != v}
        if diff:
            lines = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{out} holds a run with other settings ({lines}); use the same options or a new --out")
    else:
        atomic_write_json(run_file, ident)


class Generator:
    """Asks the teacher for each pending job; a finished job is one fsynced journal line."""

    def __init__(self, settings: SynthSettings, client: TeacherClient, journal: Journal):
        self.s = settings
        self.client = client
        self.journal = journal
        self.failed: list[tuple[str, str]] = []
        self._urls: dict[str, str] = {}

    def _image_url(self, img: SourceImage) -> str:
        if img.sha256 not in self._urls:
            if len(self._urls) > 64:
                self._urls.clear()
            self._urls[img.sha256] = image_data_url(img.path.read_bytes())
        return self._urls[img.sha256]

    async def produce(self, job: Job) -> dict[str, Any]:
        s, t, img = self.s, job.task, job.image
        url = self._image_url(img)
        seed = int(hashlib.sha256(f"{s.seed}:{job.id}".encode()).hexdigest()[:8], 16)
        record: dict[str, Any] = {"id": job.id, "image": img.rel, "image_sha256": img.sha256, "task": t.name,
                                  "index": job.index, "template": t.fingerprint, "model": s.teacher_model}
        key = cache_key(kind="generate", image=img.sha256, task=t.name, template=t.fingerprint, model=s.teacher_model,
                        index=job.index, seed=s.seed, temperature=s.temperature, max_tokens=s.max_tokens)
        try:
            text = await self.client.ask(key=key, image_url=url, prompt=t.render(job.index, s.samples_per_task),
                                         temperature=s.temperature, max_tokens=s.max_tokens, seed=seed)
        except TeacherError as e:
            if e.retryable:
                raise
            return {**record, "status": "error", "error": str(e)}
        record.update(status="ok", response=text, verify=None)
        if s.verify and t.verify:
            try:
                fields = t.parse(text)
            except SchemaError:
                return record  # the schema filter rejects it; no verifier call needed
            vkey = cache_key(kind="verify", image=img.sha256, question=fields["question"], model=s.teacher_model)
            try:
                record["verify"] = await self.client.ask(key=vkey, image_url=url, prompt=t.verify_prompt(fields),
                                                         temperature=0.0, max_tokens=64, seed=0)
            except TeacherError as e:
                if e.retryable:
                    raise
                record["verify_error"] = str(e)
        return record

    async def run(self, jobs: list[Job], done: int, total: int) -> None:
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        bar = tqdm(total=total, initial=done, desc="synth", unit="sample", dynamic_ncols=True)

        async def worker() -> None:
            while not queue.empty():
                job = queue.get_nowait()
                try:
                    record = await self.produce(job)
                except TeacherError as e:
                    self.failed.append((job.id, str(e)))
                    log.warning("%s: %s (left for the next run)", job.id, e)
                    continue
                self.journal.append(record)
                bar.update(1)

        try:
            await asyncio.gather(*(worker() for _ in range(max(1, self.s.concurrency))))
        finally:
            bar.close()


def latest_records(path: Path, retry_errors: bool) -> dict[str, dict[str, Any]]:
    """id -> its journal record (the last one wins; ``retry_errors`` forgets final errors)."""
    records = {r["id"]: r for r in read_journal(path)}
    if retry_errors:
        records = {k: r for k, r in records.items() if r.get("status") == "ok"}
    return records


def export(settings: SynthSettings, images: list[SourceImage], image_stats: dict[str, int], jobs: list[Job],
           records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Filter every expected sample and write the outputs and the data card; returns the card."""
    out, cfg = settings.out, settings.filters
    hash_fn = HASHES[settings.image_hash]
    dedup = Deduper(cfg.dedup_bits)
    for img in images:
        with Image.open(img.path) as im:
            dedup.add_image(img.sha256, hash_fn(im))
    removed = Counter({r: 0 for r in REASONS})
    per_task = {t: {"expected": 0, "kept": 0, "removed": Counter({r: 0 for r in REASONS})} for t in settings.tasks}
    kept: list[KeptSample] = []
    rejected = []
    for job in jobs:
        verdict = check_sample(records.get(job.id), job.task, cfg)
        if verdict.reason is None:
            dup = dedup.check(job.id, job.image.sha256, job.task.question(verdict.fields),
                              job.task.answer(verdict.fields))
            if dup is not None:
                verdict.reason, verdict.detail = "dedup", f"same text on a near-identical image as {dup}"
        stats = per_task[job.task.name]
        stats["expected"] += 1
        if verdict.reason is None:
            stats["kept"] += 1
            kept.append(KeptSample(job.id, job.image.out_rel, job.image.path, job.task.to_conversation(verdict.fields)))
        else:
            stats["removed"][verdict.reason] += 1
            removed[verdict.reason] += 1
            rejected.append({"id": job.id, "reason": verdict.reason, "detail": verdict.detail})
    copy_images(out, kept)
    write_llava(out, kept)
    shards = write_shards(out, kept, settings.shard_size)
    atomic_write_text(out / "rejected.jsonl", "".join(json.dumps(r) + "\n" for r in rejected))
    card = {
        "teacher": {"model": settings.teacher_model, "url": settings.teacher_url},
        "tasks": settings.tasks,
        "samples_per_task": settings.samples_per_task,
        "seed": settings.seed,
        "templates": {t: TASKS[t].fingerprint for t in settings.tasks},
        "images": image_stats,
        "samples": {"expected": len(jobs), "kept": len(kept), "removed": dict(removed)},
        "per_task": {t: {**v, "removed": dict(v["removed"])} for t, v in per_task.items()},
        "filters": {**asdict(cfg), "image_hash": settings.image_hash},
        "outputs": {"jsonl": "data.jsonl", "json": "data.json", "shards": shards, "images": "images/",
                    "rejected": "rejected.jsonl"},
    }
    assert len(kept) + sum(removed.values()) == len(jobs)  # NOTE: the card's invariant
    write_card(out, card)
    return card


def run_synth(settings: SynthSettings, *, export_only: bool = False) -> int:
    """Generate what is missing, then export; returns 0, or 1 when some samples still failed."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    tasks = [TASKS[t] for t in settings.tasks]
    images, image_stats = scan_images(settings.images)
    if not images:
        raise ValueError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {settings.images}")
    _check_identity(out, settings)
    jobs = plan_jobs(images, tasks, settings.samples_per_task)
    journal_path = out / "journal.jsonl"
    failed = 0
    if not export_only:
        journal = Journal(journal_path)  # repairs a torn last line before anything reads it
        try:
            done_ids = set(latest_records(journal_path, settings.retry_errors))
            pending = [j for j in jobs if j.id not in done_ids]
            log.info("%d images x %d task(s) x %d = %d samples; %d already journaled, %d to ask for",
                     len(images), len(tasks), settings.samples_per_task, len(jobs), len(jobs) - len(pending),
                     len(pending))
            client = TeacherClient(settings.teacher_url, settings.teacher_model, api_key=settings.api_key,
                                   max_retries=settings.max_retries, rate_limit=settings.rate_limit,
                                   timeout=settings.timeout, backoff=settings.backoff,
                                   cache=ResponseCache(settings.cache_dir or out / "cache"))
            gen = Generator(settings, client, journal)
            t0 = time.monotonic()

            async def go() -> None:
                try:
                    await gen.run(pending, len(jobs) - len(pending), len(jobs))
                finally:
                    await client.aclose()

            asyncio.run(go())
            st = client.stats
            log.info("teacher: %d requests, %d retries, %d cache hits, %d failures in %.1fs",
                     st.requests, st.retries, st.cache_hits, st.failures, time.monotonic() - t0)
            failed = len(gen.failed)
        finally:
            journal.close()
    records = latest_records(journal_path, False)
    card = export(settings, images, image_stats, jobs, records)
    s = card["samples"]
    log.info("kept %d of %d samples (%s) -> %s", s["kept"], s["expected"],
             ", ".join(f"{k} {v}" for k, v in s["removed"].items() if v), out / "data.jsonl")
    if failed:
        log.error("%d sample(s) failed after %d retries; rerun the same command to retry them", failed,
                  settings.max_retries)
        return 1
    return 0
