"""The FP8 swap logic on CPU with a fake Transformer Engine module; FP8 without TE fails clearly."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from nemo_eagle.config import EagleConfig, LLMConfig, TilingConfig, VisionConfig
from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.config import PrecisionConfig
from nemo_eagle.training.precision import PrecisionUnavailable, build_precision, require_te, swap_for_fp8, swap_to_te

FP8_EXCLUDE = ["vision.*", "projector.*", "language_model.model.layers.0.*", "language_model.model.layers.{last}.*",
               "language_model.lm_head"]


class FakeTELinear(nn.Module):
    """Stands in for ``te.Linear``: same parameters, an ``_extra_state`` entry (TE's fp8 metadata)."""

    def __init__(self, in_features, out_features, bias=True, params_dtype=None, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=params_dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=params_dtype, device=device)) if bias else None

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)

    def get_extra_state(self):
        return torch.zeros(1)

    def set_extra_state(self, state):
        pass


@pytest.fixture
def fake_te():
    return types.SimpleNamespace(Linear=FakeTELinear)


def _model(layers: int = 4) -> EagleModel:
    cfg = EagleConfig(
        vision=VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            image_size=28, patch_size=14),
        llm=LLMConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=120, vocab_size=431, max_position_embeddings=512),  # 120: not % 16
        tiling=TilingConfig(tile_size=28), image_token_id=424)
    return EagleModel(cfg)


def test_swap_keeps_keys_values_and_excludes_edges(fake_te):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 400, (1, 9))
    ref = model(input_ids=ids).logits
    swapped = swap_to_te(model, FP8_EXCLUDE, te=fake_te)

    # only the middle decoder layers' attention projections (64x64, 64x32 k/v) qualify; MLP dims are 120
    assert swapped and all(n.startswith(("language_model.model.layers.1.", "language_model.model.layers.2."))
                           for n in swapped)
    assert {n.rsplit(".", 1)[-1] for n in swapped} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    for name, module in model.named_modules():
        if isinstance(module, FakeTELinear):
            assert name in swapped
        if name.startswith(
            ("vision.", "projector.", "language_model.model.layers.0.", "language_model.model.layers.3.")
        ):
            assert not isinstance(module, FakeTELinear), name
    after = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    assert after.keys() == before.keys()  # checkpoint keys unchanged
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(model(input_ids=ids).logits, ref)


def test_dims_not_divisible_by_16_stay(fake_te):
    model = _model()
    swapped = swap_to_te(model, [], te=fake_te)
    assert not any(n.startswith("language_model.") and ".mlp." in n for n in swapped)  # intermediate 120
    assert any(n.startswith("vision.") for n in swapped)  # nothing excluded: the tower's 32/64 dims qualify


def test_trainability_is_kept(fake_te):
    model = _model()
    for p in model.language_model.model.layers[1].self_attn.q_proj.parameters():
        p.requires_grad_(False)
    swap_to_te(model, FP8_EXCLUDE, te=fake_te)
    q = model.language_model.model.layers[1].self_attn.q_proj
    assert isinstance(q, FakeTELinear) and not q.weight.requires_grad
    assert model.language_model.model.layers[1].self_attn.k_proj.weight.requires_grad


def test_fp8_that_swaps_nothing_is_an_error_not_bf16(fake_te):
    """Two decoder layers are both edges (excluded); LoRA-wrapped layers stay plain: either way nothing is FP8."""
    with pytest.raises(PrecisionUnavailable, match="no Linear layer qualifies for FP8"):
        swap_for_fp8(_model(layers=2), FP8_EXCLUDE, te=fake_te)
    from nemo_eagle.training.config import PeftConfig
    from nemo_eagle.training.peft import apply_lora

    model = _model()
    apply_lora(
        model, PeftConfig(method="lora", r=4, alpha=8, targets=["language_model.model.layers.*.self_attn.*_proj"])
    )
    with pytest.raises(PrecisionUnavailable, match="wrapped by LoRA"):
        swap_for_fp8(model, FP8_EXCLUDE, te=fake_te)
    assert swap_for_fp8(_model(), FP8_EXCLUDE, te=fake_te)  # middle layers qualify: the run really uses FP8


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_fp8_without_te_raises_a_clear_error(monkeypatch):
    with pytest.raises(PrecisionUnavailable, match="no CUDA device"):
        build_precision(PrecisionConfig(recipe="fp8_te"))
    # with a (pretend) GPU but TE half-installed: TE raises RuntimeError on import, not ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    broken = types.ModuleType("transformer_engine")

    def explode(name):
        raise RuntimeError("libcudart.so.13: cannot open shared object file")

    broken.__getattr__ = explode
    monkeypatch.setitem(sys.modules, "transformer_engine", broken)
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", None)
    with pytest.raises(PrecisionUnavailable, match="cannot be imported"):
        require_te()


def test_cpu_recipes():
    assert build_precision(PrecisionConfig(recipe="fp32")).trainer_precision == "32-true"
    assert build_precision(PrecisionConfig(recipe="bf16_mixed")).trainer_precision == "bf16-mixed"
    with pytest.raises(ValueError, match="not one of"):
        PrecisionConfig(recipe="fp4")
