"""Contrastive fine-tuning of ``EagleEmbedder`` with Lightning: InfoNCE over in-batch and hard negatives.

Data is JSONL, one example a line::

    {"query": "what was the revenue in 2023?", "positive": {"image": "pages/p12.png"},
     "negatives": ["an unrelated passage", {"image": "pages/p40.png", "text": "caption"}]}

A document is a string (text) or a dict with ``image`` (a path relative to the JSONL file) and/or ``text``.
Each query is scored against every positive and hard negative of the batch; the loss is cross-entropy of the
scores / temperature with the query's own positive as the target. Copies of a query's positive elsewhere in
the batch are masked rather than counted as negatives. LoRA (peft) on the LLM is optional; it is merged into
the weights before saving, so the output is a plain checkpoint ``EagleEmbedder.from_pretrained`` loads.

    nemo-eagle train-embedder --model nvidia/Eagle2-1B --data train.jsonl --out ckpt/ --mode multi --lora
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nemo_eagle.embed import scoring
from nemo_eagle.embed.embedder import EagleEmbedder, EmbedBatch

log = logging.getLogger(__name__)

LLM_LINEAR_GLOBS = ("language_model.model.layers.*.self_attn.*_proj", "language_model.model.layers.*.mlp.*_proj")


@dataclass(kw_only=True)
class ContrastiveConfig:
    """Hyper-parameters of contrastive fine-tuning."""

    temperature: float | None = None  # None: 0.02 for single vectors (cosine), 1.0 for multi (raw MaxSim sums)
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    max_steps: int = 1000
    batch_size: int = 16  # queries per step; the candidate pool is their positives plus hard negatives
    num_negatives: int = 1  # hard negatives per query taken from each example (0: in-batch negatives only)
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LLM_LINEAR_GLOBS
    freeze_vision: bool = True  # vision tower and projector stay frozen unless asked (as embed-VL recipes do)
    truncate: str = "END"
    seed: int = 0
    precision: str = "32-true"  # any Lightning precision: "bf16-mixed" on GPUs
    accelerator: str = "auto"

    def __post_init__(self) -> None:
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1 or self.max_steps < 1 or self.num_negatives < 0:
            raise ValueError("batch_size and max_steps must be >= 1 and num_negatives >= 0")
        self.lora_targets = tuple(self.lora_targets)

    def temperature_for(self, mode: str) -> float:
        return self.temperature if self.temperature is not None else (1.0 if mode == "multi" else 0.02)


# ----------------------------------------------------------------------------------------------------- data
@dataclass
class Example:
    query: Any
    positive: Any
    negatives: list[Any] = field(default_factory=list)


def _doc(x: Any, base: Path, where: str) -> Any:
    if isinstance(x, str):
        return x
    if isinstance(x, dict) and ("image" in x or "text" in x):
        out = dict(x)
        if isinstance(out.get("image"), str) and not out["image"].startswith("data:"):
            path = base / out["image"]
            if not path.exists():
                raise FileNotFoundError(f"{where}: image {path} not found")
            out["image"] = str(path)
        return out
    raise ValueError(f"{where}: a document must be a string or a dict with 'image' and/or 'text', got {x!r:.80}")


def load_examples(path: str | Path) -> list[Example]:
    """Read query / positive / negatives JSONL (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} not found")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict) or "query" not in row or "positive" not in row:
            raise ValueError(f"{where}: each line needs 'query' and 'positive' (and optional 'negatives')")
        negatives = row.get("negatives") or []
        if not isinstance(negatives, list):
            raise ValueError(f"{where}: 'negatives' must be a list")
        out.append(Example(_doc(row["query"], path.parent, where), _doc(row["positive"], path.parent, where),
                           [_doc(d, path.parent, where) for d in negatives]))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out


@dataclass
class ContrastiveBatch:
    queries: EmbedBatch
    docs: EmbedBatch  # positives 0..B-1 first, then hard negatives
    false_negatives: Tensor  # (B, N_docs) bool: other copies of a query's positive, masked out of its loss


def _key(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


class Collator:
    """Tokenises examples into a ``ContrastiveBatch`` through the embedder's own processor."""

    def __init__(self, embedder: EagleEmbedder, num_negatives: int, truncate: str):
        self.embedder = embedder
        self.num_negatives = num_negatives
        self.truncate = truncate

    def __call__(self, examples: list[Example]) -> ContrastiveBatch:
        docs = [ex.positive for ex in examples] + [d for ex in examples for d in ex.negatives[:self.num_negatives]]
        keys = [_key(d) for d in docs]
        false_neg = torch.zeros(len(examples), len(docs), dtype=torch.bool)
        for i in range(len(examples)):
            for j, k in enumerate(keys):
                false_neg[i, j] = j != i and k == keys[i]
        return ContrastiveBatch(self.embedder.prepare([ex.query for ex in examples], "query", self.truncate),
                                self.embedder.prepare(docs, "passage", self.truncate), false_neg)


def info_nce(embedder: EagleEmbedder, batch: ContrastiveBatch, temperature: float) -> tuple[Tensor, Tensor]:
    """InfoNCE loss and in-batch top-1 accuracy; query i's target is document i."""
    q, qm = embedder(batch.queries)
    d, dm = embedder(batch.docs)
    scores = q @ d.T if qm is None else scoring.maxsim(q, qm, d, dm)
    logits = (scores / temperature).masked_fill(batch.false_negatives.to(scores.device), float("-inf"))
    target = torch.arange(q.shape[0], device=scores.device)
    return F.cross_entropy(logits, target), (logits.argmax(-1) == target).float().mean()


# ----------------------------------------------------------------------------------------------------- lora
def apply_lora(embedder: EagleEmbedder, cfg: ContrastiveConfig) -> list[str]:
    """LoRA adapters on the LLM Linear layers matching ``cfg.lora_targets``; returns their names."""
    from peft import LoraConfig, inject_adapter_in_model

    model = embedder.model
    targets = [
        n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(fnmatch(n, g) for g in cfg.lora_targets)
    ]
    if not targets:
        raise ValueError(f"lora_targets {list(cfg.lora_targets)} match no Linear layer of the model")
    inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       target_modules=targets, bias="none"), model)
    log.info("LoRA r=%d alpha=%d on %d Linear layers", cfg.lora_rank, cfg.lora_alpha, len(targets))
    return targets


def merge_lora(embedder: EagleEmbedder) -> int:
    """Fold the adapters into the base weights and restore plain Linear modules; returns how many."""
    from peft.tuners.lora import LoraLayer

    model = embedder.model
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, layer.get_base_layer())
    return len(layers)


def set_trainable(embedder: EagleEmbedder, cfg: ContrastiveConfig) -> dict[str, int]:
    """requires_grad: LoRA adapters (or the whole LLM), the projection head; vision/projector if not frozen."""
    counts = {"trainable": 0, "frozen": 0}
    for name, p in embedder.named_parameters():
        if name.startswith("projection."):
            train = True
        elif name.startswith(("model.vision.", "model.projector.")):
            train = not cfg.freeze_vision
        else:
            train = ".lora_" in name if cfg.lora else True
        p.requires_grad_(train)
        counts["trainable" if train else "frozen"] += p.numel()
    log.info("parameters: %d trainable, %d frozen", counts["trainable"], counts["frozen"])
    return counts


# ------------------------------------------------------------------------------------------------ lightning
def _lightning_module(embedder: EagleEmbedder, cfg: ContrastiveConfig):
    import lightning.pytorch as pl

    temperature = cfg.temperature_for(embedder.mode)

    class ContrastiveModule(pl.LightningModule):
        """InfoNCE training of an ``EagleEmbedder`` (which owns the model and the projection head)."""

        def __init__(self) -> None:
            super().__init__()
            self.embedder = embedder

        def training_step(self, batch: ContrastiveBatch, batch_idx: int) -> Tensor:
            loss, acc = info_nce(self.embedder, batch, temperature)
            self.log("train/loss", loss, prog_bar=True, batch_size=batch.false_negatives.shape[0])
            self.log("train/in_batch_acc", acc, prog_bar=True, batch_size=batch.false_negatives.shape[0])
            return loss

        def transfer_batch_to_device(self, batch: ContrastiveBatch, device: torch.device, dataloader_idx: int):
            return batch  # the embedder moves its inputs itself (pixel dtype included)

        def configure_optimizers(self):
            params = [p for p in self.embedder.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    return ContrastiveModule()


def fit(embedder: EagleEmbedder, examples: list[Example], cfg: ContrastiveConfig, *,
        enable_progress_bar: bool = True) -> dict[str, float]:
    """Fine-tune ``embedder`` in place; LoRA adapters (if any) are merged before returning."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.lora:
        apply_lora(embedder, cfg)
    set_trainable(embedder, cfg)
    loader = DataLoader(examples, batch_size=min(cfg.batch_size, len(examples)), shuffle=True, drop_last=True,
                        collate_fn=Collator(embedder, cfg.num_negatives, cfg.truncate),
                        generator=torch.Generator().manual_seed(cfg.seed))
    module = _lightning_module(embedder, cfg)
    trainer = pl.Trainer(accelerator=cfg.accelerator, devices=1, max_steps=cfg.max_steps, precision=cfg.precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=enable_progress_bar,
                         enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=loader)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.lora:
        log.info("merged %d LoRA layers into the weights", merge_lora(embedder))
    for p in embedder.parameters():
        p.requires_grad_(False)
    embedder.eval()
    return metrics


def recall_at_1(embedder: EagleEmbedder, examples: list[Example], truncate: str = "END") -> float:
    """Share of queries whose own positive scores highest among all the examples' positives."""
    queries = embedder.embed([ex.query for ex in examples], "query", truncate=truncate)
    docs = embedder.embed([ex.positive for ex in examples], "passage", truncate=truncate)
    best = embedder.score(queries, docs).argmax(-1)
    return float((best == torch.arange(len(examples))).float().mean())


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nemo-eagle train-embedder", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="EAGLE2 checkpoint directory or hub id")
    p.add_argument("--data", required=True, type=Path, help="query/positive/negatives JSONL")
    p.add_argument("--out", required=True, type=Path, help="where to save the fine-tuned embedder")
    p.add_argument("--mode", choices=("single", "multi"), default=None)
    p.add_argument("--pooling", choices=("mean", "last"), default=None)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--projection-dim", type=int, default=None)
    p.add_argument("--max-tiles", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    from nemo_eagle.cli import add_dtype_arg

    add_dtype_arg(p, help_default="the checkpoint's")
    p.add_argument("--temperature", type=float, default=None, help="default: 0.02 single, 1.0 multi")
    for f, default in asdict(ContrastiveConfig()).items():
        if f == "temperature":
            continue
        if isinstance(default, bool):
            p.add_argument(f"--{f.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default)
        elif not isinstance(default, tuple):
            p.add_argument(f"--{f.replace('_', '-')}", type=type(default), default=default)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = ContrastiveConfig(**{f: getattr(args, f) for f in asdict(ContrastiveConfig()) if hasattr(args, f)})
        examples = load_examples(args.data)
        overrides = {k: getattr(args, k) for k in ("mode", "pooling", "bidirectional", "projection_dim", "max_tiles",
                                                   "max_length")}
        embedder = EagleEmbedder.from_pretrained(args.model, dtype=args.dtype, **overrides)
        log.info("recall@1 on the training set before: %.3f", recall_at_1(embedder, examples))
        metrics = fit(embedder, examples, cfg)
        log.info("recall@1 on the training set after: %.3f (%s)", recall_at_1(embedder, examples), metrics)
        embedder.save_pretrained(args.out)
        log.info("saved the fine-tuned embedder to %s", args.out)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"nemo-eagle train-embedder: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
