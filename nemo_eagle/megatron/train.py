"""Training the megatron EAGLE2 with megatron's own schedules: DP + TP (+ PP), distributed optimizer, FP8 on GPU.

Megatron's ``get_forward_backward_func`` runs the micro-batches (1F1B when pipeline-parallel), megatron's DDP
reduces gradients and ``DistributedOptimizer`` shards the optimizer state over data-parallel ranks. The loss is
the token mean over the whole global batch (``calculate_per_token_loss``), so any TP/PP/DP layout gives the same
number. FP8 (TE recipes) and recompute are settings of ``MegatronOptions``; the vision tower never runs in FP8.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 1e-4
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = True


def make_microbatch(input_ids: Tensor, pixel_values: Tensor | None = None, labels: Tensor | None = None) -> dict:
    """A micro-batch in megatron's convention from HF-style ``labels`` (same positions as ``input_ids``,
    -100 = ignore; default: every next token): ``labels[:, t]`` becomes the target of position t."""
    labels = input_ids if labels is None else labels
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    loss_mask = (targets != IGNORE_INDEX).float()
    batch = {"input_ids": input_ids, "labels": targets.masked_fill(targets == IGNORE_INDEX, 0), "loss_mask": loss_mask}
    if pixel_values is not None:
        batch["pixel_values"] = pixel_values
    return batch


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _loss_func(loss_mask: Tensor, per_token: Tensor):
    """Sum of masked per-token losses and the token count; the schedule divides by the global token count."""
    mask = loss_mask.reshape(-1).float()
    total = (per_token.reshape(-1).float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return total, num_tokens, {"lm loss": torch.stack([total.detach(), mask.sum().detach()])}


def forward_step(data_iterator: Iterator[dict], model):
    """megatron schedule callback: one micro-batch forward on this stage."""
    batch = _to_device(next(data_iterator), next(model.parameters()).device)
    out = model(batch["input_ids"], batch.get("pixel_values"), labels=batch["labels"])
    return out, partial(_loss_func, batch["loss_mask"])


class Trainer:
    """Holds the DDP-wrapped stage and its optimizer; ``train_step`` runs one global batch."""

    def __init__(self, model, optim: OptimConfig | None = None) -> None:
        from megatron.core.distributed import (
            DistributedDataParallel,
            DistributedDataParallelConfig,
            finalize_model_grads,
        )
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        optim = optim or OptimConfig()
        config = model.config
        config.calculate_per_token_loss = True
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=optim.use_distributed_optimizer,
                                                   check_for_nan_in_grad=True)
        self.model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
        config.no_sync_func = self.model.no_sync
        config.finalize_model_grads_func = finalize_model_grads
        opts = model.options
        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
                            adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, clip_grad=optim.clip_grad,
                            bf16=opts.dtype == "bfloat16", fp16=opts.dtype == "float16", params_dtype=opts.torch_dtype,
                            use_distributed_optimizer=optim.use_distributed_optimizer),
            [self.model],
        )
        self.step = 0
        log.info("trainer: distributed optimizer=%s, lr=%g, fp8=%s, recompute=%s", optim.use_distributed_optimizer,
                 optim.lr, opts.fp8, opts.recompute)

    def train_step(self, microbatches: list[dict]) -> dict:
        """Forward + backward over ``microbatches`` (same shapes; padded), one optimizer step. Returns
        {"loss", "grad_norm", "tokens"}, identical on every rank."""
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        if not microbatches:
            raise ValueError("train_step needs at least one micro-batch")
        b, length = microbatches[0]["input_ids"].shape
        if any(mb["input_ids"].shape != (b, length) for mb in microbatches):
            raise ValueError("all micro-batches of a step must share one (batch, seq_len) shape; pad them")
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        stats = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(microbatches), model=[self.model],
            num_microbatches=len(microbatches), seq_length=length, micro_batch_size=b, forward_only=False,
        )
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            raise FloatingPointError(f"optimizer step {self.step} skipped (non-finite gradients)")
        self.step += 1
        # loss sum and token count live on the last stage; sum over DP, then share along the pipeline.
        totals = torch.zeros(2, dtype=torch.float64, device=next(self.model.parameters()).device)
        for s in stats:
            totals += s["lm loss"].double()
        if parallel_state.is_pipeline_last_stage():
            dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        last = parallel_state.get_pipeline_model_parallel_last_rank()
        dist.broadcast(totals, src=last, group=parallel_state.get_pipeline_model_parallel_group())
        return {"loss": float(totals[0] / totals[1].clamp(min=1)), "grad_norm": float(grad_norm or 0.0),
                "tokens": int(totals[1])}

    @torch.no_grad()
    def eval_loss(self, microbatches: list[dict]) -> float:
        """Token-mean loss without updating anything."""
        from megatron.core import parallel_state
        from megatron.core.pipeline_parallel import get_forward_backward_func

        b, length = microbatches[0]["input_ids"].shape
        self.model.eval()
        stats = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(microbatches), model=[self.model],
            num_microbatches=len(microbatches), seq_length=length, micro_batch_size=b, forward_only=True,
        )
        totals = torch.zeros(2, dtype=torch.float64, device=next(self.model.parameters()).device)
        for s in stats:
            totals += s["lm loss"].double()
        if parallel_state.is_pipeline_last_stage():
            dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        dist.broadcast(totals, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
        return float(totals[0] / totals[1].clamp(min=1))

    def save_checkpoint(self, path: str | Path) -> None:
        """Collective: model + optimizer state + step, reshardable to any layout (see ``checkpoint``)."""
        from nemo_eagle.megatron import checkpoint

        checkpoint.save(self.model.module, path, optimizer=self.optimizer, meta={"step": self.step})

    def load_checkpoint(self, path: str | Path) -> None:
        """Collective: resume model, optimizer state and step from ``save_checkpoint``."""
        from nemo_eagle.megatron import checkpoint

        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            # torch's Adam (the fallback without TE/APEX) creates its state at the first step, but megatron reads
            # the state's layout to load into it: materialise it with megatron's own zero-gradient step first.
            if not opt.optimizer.state and hasattr(opt, "_init_optimizer_states_with_dummy_values"):
                opt._init_optimizer_states_with_dummy_values()
        checkpoint.load(self.model.module, path, optimizer=self.optimizer)
        for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
            # megatron (without TE/APEX) restores ONE step tensor shared by every parameter's state, and torch's
            # Adam increments it in place once per parameter: give each parameter its own copy.
            for st in opt.optimizer.state.values():
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].clone()
        self.step = int(checkpoint.read_meta(path).get("step", 0))

    def fit(self, batches: Iterable[list[dict]], steps: int, *, log_every: int = 1) -> list[dict]:
        """A small loop: ``steps`` global batches from ``batches``, logging loss and tokens/s."""
        history = []
        it = iter(batches)
        for _ in range(steps):
            started = time.perf_counter()
            out = self.train_step(next(it))
            out["tokens_per_s"] = out["tokens"] / max(time.perf_counter() - started, 1e-9)
            history.append(out)
            if self.step % log_every == 0:
                log.info("step %d loss %.4f grad_norm %.3f %.0f tokens/s", self.step, out["loss"], out["grad_norm"],
                         out["tokens_per_s"])
        return history
