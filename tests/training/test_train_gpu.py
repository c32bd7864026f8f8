"""GPU checks: the real Transformer Engine swap matches the reference, and bf16 / FP8 training steps run.

Run on a GPU machine with ``pytest -m gpu tests/training``; they are skipped on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from train_helpers import tiny_overrides

from nemo_eagle.config import EagleConfig, LLMConfig, TilingConfig, VisionConfig
from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.callbacks import read_step_log
from nemo_eagle.training.run import CONF_DIR, load_run, train


def _te_or_skip():
    """Transformer Engine, or a skip naming why (it raises RuntimeError, not ImportError, when half-installed)."""
    from nemo_eagle.training.precision import require_te

    try:
        return require_te()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"transformer_engine is not usable on this GPU machine: {e}")


def _fp8_exclude() -> list[str]:
    import yaml

    return yaml.safe_load((CONF_DIR / "precision" / "fp8_te.yaml").read_text())["exclude"]


@pytest.mark.gpu
def test_te_swap_keeps_keys_and_matches_the_reference():
    from nemo_eagle.training.precision import swap_to_te

    te = _te_or_skip()
    cfg = EagleConfig(
        vision=VisionConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                            image_size=28, patch_size=14),
        llm=LLMConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=256, vocab_size=512, max_position_embeddings=512),
        tiling=TilingConfig(tile_size=28), image_token_id=500)
    torch.manual_seed(0)
    model = EagleModel(cfg, dtype=torch.bfloat16).cuda()
    keys = set(model.state_dict())
    ids = torch.randint(0, 400, (2, 32), device="cuda")
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    swapped = swap_to_te(model, _fp8_exclude(), te=te)
    assert swapped and all(n.startswith(("language_model.model.layers.1.", "language_model.model.layers.2."))
                           for n in swapped)
    assert {k for k in model.state_dict() if not k.endswith("_extra_state")} == keys
    with torch.no_grad():
        bf16 = model(input_ids=ids).logits.float()  # te.Linear outside fp8_autocast: plain bf16 GEMMs
        torch.testing.assert_close(bf16, ref, rtol=2e-2, atol=2e-2)
        with te.fp8_autocast(enabled=True):
            fp8 = model(input_ids=ids).logits.float()
    assert torch.isfinite(fp8).all()
    assert (fp8 - ref).abs().mean() < 0.1 * ref.abs().mean()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp8_te"])
def test_a_few_gpu_training_steps(precision, tiny_ckpt, color_data, tmp_path):
    pytest.importorskip("hydra", reason="the training entry point composes Hydra configs (install the nemo extra)")
    if precision == "fp8_te":
        _te_or_skip()
    exp = tmp_path / precision
    # four decoder layers: FP8 keeps the first and last in bf16, so the middle two run through te.Linear
    run = load_run(tiny_overrides(tiny_ckpt, color_data, exp, f"precision={precision}", "trainer.accelerator=gpu",
                                  "trainer.max_steps=4", "data.micro_batch_size=4", "optim.lr=1e-3",
                                  "model.config.llm.num_hidden_layers=4"))
    result = train(run)
    if precision == "fp8_te":
        te_layers = [
            n for n, m in result.model.model.named_modules() if type(m).__module__.startswith("transformer_engine")
        ]
        assert te_layers and all(".layers.1." in n or ".layers.2." in n for n in te_layers)
    losses = [r["loss"] for r in read_step_log(exp / "train_log.jsonl")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    loaded = EagleModel.from_pretrained(result.nemo_path)
    assert sum(p.numel() for p in loaded.parameters()) > 0
