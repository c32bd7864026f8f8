"""Training through megatron's schedules on CPU, and the refusals for features that cannot run here."""

from __future__ import annotations

import pytest
import torch
from megatron_helpers import megatron_from_hf, microbatches

from nemo_eagle.megatron.config import MegatronOptions, check_options
from nemo_eagle.megatron.train import IGNORE_INDEX, OptimConfig, Trainer, make_microbatch


def test_make_microbatch_shifts_hf_labels():
    ids = torch.tensor([[5, 6, 7, 8]])
    mb = make_microbatch(ids, labels=torch.tensor([[IGNORE_INDEX, 6, IGNORE_INDEX, 8]]))
    assert mb["labels"].tolist() == [[6, 0, 8, 0]]  # target of position t is label t+1; masked ones are 0
    assert mb["loss_mask"].tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert make_microbatch(ids)["labels"].tolist() == [[6, 7, 8, 0]]


def test_one_step_reduces_loss_with_distributed_optimizer(megatron_cpu, tiny_ckpt, fixtures_dir):
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    model = megatron_from_hf(tiny_ckpt)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    trainer = Trainer(model, OptimConfig(lr=1e-3))
    opts = getattr(trainer.optimizer, "chained_optimizers", [trainer.optimizer])
    assert all(isinstance(o, DistributedOptimizer) for o in opts)
    mbs = microbatches(fixtures_dir)
    history = trainer.fit(iter([mbs, mbs]), steps=2)
    after = trainer.eval_loss(mbs)
    assert history[0]["tokens"] == int(sum(mb["loss_mask"].sum() for mb in mbs))
    assert history[1]["loss"] < history[0]["loss"] and after < history[1]["loss"]
    changed = [k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])]
    # every part of the model learns: vision tower, projector, decoder
    for part in ("vision.patch_embed", "vision.decoder", "projector.fc1", "language_model.decoder.layers.1"):
        assert any(k.startswith(part) for k in changed), part


def test_train_step_rejects_ragged_microbatches(megatron_cpu, tiny_ckpt, fixtures_dir):
    trainer = Trainer(megatron_from_hf(tiny_ckpt))
    mb = microbatches(fixtures_dir)[0]
    short = {k: (v[:, :-1] if k != "pixel_values" else v) for k, v in mb.items()}
    with pytest.raises(ValueError, match="share one"):
        trainer.train_step([mb, short])
    with pytest.raises(ValueError, match="at least one"):
        trainer.train_step([])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")
@pytest.mark.parametrize("changes, message", [
    ({"fp8": "hybrid", "dtype": "bfloat16"}, "fp8='hybrid' needs Transformer Engine"),
    ({"apply_rope_fusion": True}, "apply_rope_fusion needs CUDA"),
    ({"recompute": "full"}, "recompute='full' needs CUDA"),
    ({"recompute": "selective"}, "recompute='selective' needs CUDA"),
    ({"gradient_accumulation_fusion": True}, "gradient_accumulation_fusion needs CUDA"),
    ({"sequence_parallel": True, "tensor_parallel": 2}, "sequence_parallel needs Transformer Engine"),
    ({"impl": "transformer_engine"}, "Transformer Engine is unavailable"),
])
def test_features_that_cannot_run_on_cpu_fail_clearly(changes, message):
    with pytest.raises(RuntimeError, match=message):
        check_options(MegatronOptions(**changes))


def test_option_values_are_validated():
    with pytest.raises(ValueError, match="fp8='fp4' is not one of"):
        MegatronOptions(fp8="fp4")
    with pytest.raises(ValueError, match="recompute"):
        MegatronOptions(recompute="everything")
    assert check_options(MegatronOptions()) in ("local", "transformer_engine")


def test_fp8_build_is_refused_before_anything_runs(megatron_cpu, tiny_ckpt):
    if torch.cuda.is_available():
        pytest.skip("FP8 may be available on this machine")
    with pytest.raises(RuntimeError, match="cannot run these megatron options here"):
        megatron_from_hf(tiny_ckpt, MegatronOptions(fp8="e4m3", dtype="bfloat16"))


def test_fp8_and_recompute_reach_the_decoder_only(tiny_ckpt):
    """The precision recipe goes to the GPT decoder's config; SigLIP's stays bf16 and is never recomputed."""
    from nemo_eagle.config import load_model_config
    from nemo_eagle.megatron.config import llm_transformer_config, vision_transformer_config

    cfg = load_model_config(tiny_ckpt)
    opts = MegatronOptions(fp8="hybrid", fp8_recipe="delayed", dtype="bfloat16", recompute="full")
    llm, vision = llm_transformer_config(cfg.llm, opts), vision_transformer_config(cfg.vision, opts)
    assert (llm.fp8, llm.fp8_recipe, llm.recompute_granularity) == ("hybrid", "delayed", "full")
    assert vision.fp8 is None and vision.recompute_granularity is None and vision.bf16
    assert vision.pipeline_model_parallel_size == 1  # the whole tower lives on the first stage


def test_resume_from_checkpoint_continues_exactly(megatron_cpu, tiny_ckpt, fixtures_dir, tmp_path):
    """Model, distributed-optimizer state (Adam moments) and step survive save -> load bit for bit."""
    mbs = microbatches(fixtures_dir)
    trainer = Trainer(megatron_from_hf(tiny_ckpt), OptimConfig(lr=1e-3))
    trainer.train_step(mbs)
    trainer.save_checkpoint(tmp_path / "ckpt")
    uninterrupted = trainer.train_step(mbs)["loss"], trainer.eval_loss(mbs)

    resumed = Trainer(megatron_from_hf(tiny_ckpt), OptimConfig(lr=1e-3))
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.step == 1
    assert (resumed.train_step(mbs)["loss"], resumed.eval_loss(mbs)) == uninterrupted
