"""Helpers shared by the megatron tests, importable by spawned worker ranks (which run the CPU shim first)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

LR = 1e-3
IMAGE_TOKEN = 424  # <IMG_CONTEXT> of the tiny fixture checkpoint


def fixture_batch(fixtures_dir: Path, stem: str) -> dict:
    """input_ids, pixel_values and expected last-8 logits of one NVIDIA fixture."""
    d = np.load(fixtures_dir / "expected" / f"{stem}.npz")
    return {
        "input_ids": torch.from_numpy(d["input_ids"]),
        "pixel_values": (torch.from_numpy(d["tiles_uint8"]).float() - 127.5) / 127.5,
        "logits": torch.from_numpy(d["logits"]),
        "positions": torch.from_numpy(d["logits_positions"]),
    }


def megatron_from_hf(path: Path, opts=None):
    """This rank's stage of the megatron model with the HF checkpoint's weights (its TP slice, its PP layers)."""
    from megatron.core import parallel_state

    from nemo_eagle.megatron import bridge, parallel
    from nemo_eagle.megatron.config import MegatronOptions
    from nemo_eagle.megatron.convert import hf_config
    from nemo_eagle.megatron.model import build_model

    hf = bridge.HFWeights(path)
    cfg = hf_config(Path(path), hf)
    opts = opts or MegatronOptions()
    parallel.initialize(opts.tensor_parallel, opts.pipeline_parallel)
    model = build_model(cfg, opts)
    full = bridge.hf_to_megatron(hf, cfg, model.padded_vocab_size)
    state = bridge.stage_state_dict(model, full, parallel_state.get_tensor_model_parallel_rank(), opts.tensor_parallel)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    return model


def microbatches(fixtures_dir: Path) -> list[dict]:
    """Two micro-batches of one shape, cut down to one tile to keep CPU runs short: the portrait fixture's prompt
    with 256 image tokens and its first tile, and the same prompt with that tile mirrored and loss on its last
    tokens only, so the two hold different token counts (a mean of per-micro-batch or per-rank means would differ
    from the token mean)."""
    from nemo_eagle.megatron.train import make_microbatch

    b = fixture_batch(fixtures_dir, "portrait_300x900")
    ids = b["input_ids"][0]
    image = (ids == IMAGE_TOKEN).nonzero().flatten()
    ids = torch.cat([ids[: int(image[0]) + 256], ids[int(image[-1]) + 1:]]).unsqueeze(0)
    tile = b["pixel_values"][:1]
    answer_only = ids.clone()
    answer_only[:, : ids.shape[1] - 6] = -100
    return [make_microbatch(ids, tile), make_microbatch(ids, tile.flip(-1), labels=answer_only)]


def run_layout(ckpt: Path, mbs: list[dict], tp: int, pp: int, dp_split: bool = False) -> dict:
    """Loss and logits before, and the loss after, one optimizer step in one parallel layout (collective).

    ``dp_split``: each data-parallel rank takes its own share of the micro-batches."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from nemo_eagle.megatron.config import MegatronOptions
    from nemo_eagle.megatron.train import OptimConfig, Trainer

    model = megatron_from_hf(ckpt, MegatronOptions(tensor_parallel=tp, pipeline_parallel=pp))
    if dp_split:
        dp, rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
        mbs = mbs[rank::dp]
    out = {}
    if pp == 1:
        with torch.no_grad():
            model.eval()
            out["logits"] = model.gather_logits(model(mbs[0]["input_ids"], mbs[0]["pixel_values"]))
    trainer = Trainer(model, OptimConfig(lr=LR))
    step = trainer.train_step(mbs)  # its loss is the forward before the update
    out.update(loss_before=step["loss"], grad_norm=step["grad_norm"], loss_after=trainer.eval_loss(mbs))
    out["rank"] = dist.get_rank() if dist.is_initialized() else 0
    return out


def parallel_worker(ckpt: str, fixtures_dir: str, save_dir: str) -> dict:
    """Spawned rank (world of 2): TP=2, then PP=2, then DP=2; finally saves a TP=2 megatron checkpoint."""
    import megatron_cpu_shim

    megatron_cpu_shim.enable()
    from nemo_eagle.megatron.convert import convert

    mbs = microbatches(Path(fixtures_dir))
    results = {"tp2": run_layout(Path(ckpt), mbs, tp=2, pp=1),
               "pp2": run_layout(Path(ckpt), mbs, tp=1, pp=2),
               "dp2": run_layout(Path(ckpt), mbs, tp=1, pp=1, dp_split=True)}
    results["convert"] = convert(ckpt, save_dir, to_format="megatron", tp=2)
    return results
