"""Kernel choice policy: ``auto`` falls back to torch (and says why), an explicit ``triton`` that cannot run raises,
and the model / processor reach the kernels only through the registry."""

from __future__ import annotations

import logging
from collections import defaultdict

import pytest
import torch

from nemo_eagle.ops import KernelConfig, get_op, reference, registry, resolve, use_kernels


def _project_args(dtype=torch.float32):
    k, hidden = 4 * 5, 12
    return [torch.randn(2, 36, 5, dtype=dtype), torch.ones(k, dtype=dtype), torch.zeros(k, dtype=dtype),
            torch.randn(hidden, k, dtype=dtype), torch.randn(hidden, dtype=dtype),
            torch.randn(hidden, hidden, dtype=dtype), torch.randn(hidden, dtype=dtype)]


@pytest.fixture
def triton_missing(monkeypatch):
    """A process where the triton backend's module cannot be imported (as without the `kernels` extra)."""
    monkeypatch.setitem(registry._BACKEND_MODULES, "triton", "triton_kernels_not_installed")
    monkeypatch.setattr(registry, "_LOAD_ERRORS", {})
    only_torch = defaultdict(dict, {op: {"torch": impls["torch"]} for op, impls in registry._REGISTRY.items()})
    monkeypatch.setattr(registry, "_REGISTRY", only_torch)


@pytest.mark.usefixtures("no_interpreter")
def test_auto_on_cpu_runs_the_reference_and_never_launches_a_kernel(monkeypatch):
    import triton_kernels.projector as projector
    import triton_kernels.tiles as tiles

    def boom(*args, **kwargs):
        raise AssertionError("a Triton kernel was launched for CPU tensors without the interpreter")

    monkeypatch.setattr(projector, "project_tokens_fwd", boom)
    monkeypatch.setattr(tiles, "tile_images_op", boom)
    fn, used = resolve("tile_images", "auto")
    assert used == "triton"  # the backend loads; the per-call check sends CPU tensors to torch
    image = torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8)
    assert torch.equal(fn(image, (2, 1), 14), reference.tile_images(image, (2, 1), 14))
    args = _project_args()
    torch.testing.assert_close(get_op("project_tokens", "auto")(*args), reference.project_tokens(*args), atol=0, rtol=0)


def test_opt_in_kernel_is_kept_out_of_auto_but_used_by_name(caplog):
    # project_tokens' Triton GEMM measured slower than cuBLAS, so it is registered with in_auto=False
    with caplog.at_level(logging.INFO, logger="nemo_eagle.ops.registry"):
        fn, used = resolve("project_tokens", "auto")
    assert (fn, used) == (reference.project_tokens, "torch") and "opt-in" in caplog.text
    fast, used = resolve("project_tokens", "triton")
    assert used == "triton" and fast is not reference.project_tokens


@pytest.mark.usefixtures("no_interpreter")
def test_explicit_triton_on_cpu_without_interpreter_raises_clearly():
    with pytest.raises(RuntimeError, match="CUDA"):
        get_op("project_tokens", "triton")(*_project_args())
    with pytest.raises(RuntimeError, match="CUDA"):
        get_op("tile_images", "triton")(torch.zeros(3, 8, 8, dtype=torch.uint8), (1, 1), 14)


def test_auto_falls_back_and_logs_when_triton_cannot_load(triton_missing, caplog):
    with caplog.at_level(logging.INFO, logger="nemo_eagle.ops.registry"):
        fn, used = resolve("project_tokens", "auto")
    assert (fn, used) == (reference.project_tokens, "torch")
    assert "triton unavailable" in caplog.text and "triton_kernels_not_installed" in caplog.text


def test_explicit_triton_that_cannot_load_raises(triton_missing):
    with pytest.raises(RuntimeError, match="'triton' requested for tile_images but it cannot load"):
        get_op("tile_images", "triton")
    with pytest.raises(RuntimeError, match="cannot load"):
        use_kernels(torch.nn.Sequential(_NamedOp()), KernelConfig(backend="triton"))


class _NamedOp(torch.nn.Module):
    op = "project_tokens"

    def __init__(self):
        super().__init__()
        self.impl = reference.project_tokens


def test_use_kernels_binds_once_and_logs_the_table(caplog):
    model = torch.nn.Sequential(_NamedOp(), _NamedOp())
    with caplog.at_level(logging.INFO, logger="nemo_eagle.ops.registry"):
        table = use_kernels(model, KernelConfig(backend="torch", overrides={}))
    assert table == {"project_tokens:torch": 2}
    assert "project_tokens:torch" in caplog.text
    assert all(m.impl is reference.project_tokens for m in model)


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    calls = [0]
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.usefixtures("interpreter")
def test_tiny_model_projector_through_use_kernels_matches_torch(tiny_ckpt, monkeypatch):
    import triton_kernels.projector as projector
    from nemo_eagle import EagleModel

    calls = _count_calls(monkeypatch, projector, "project_tokens_fwd")
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32)
    pixel_values = torch.randn(2, 3, model.config.vision.image_size, model.config.vision.image_size)
    with torch.no_grad():
        want = model.get_image_features(pixel_values)
        table = use_kernels(model, KernelConfig(backend="triton"))
        got = model.get_image_features(pixel_values)
    assert table.get("project_tokens:triton") == 1 and calls[0] == 1
    assert got.shape == (2, model.config.tokens_per_tile, model.config.llm.hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("interpreter")
def test_processor_tiles_through_the_kernel(tiny_ckpt, fixtures_dir, monkeypatch):
    from dataclasses import replace

    import triton_kernels.tiles as tiles
    from nemo_eagle import EagleProcessor

    calls = _count_calls(monkeypatch, tiles, "tile_images_op")
    out = {}
    for backend in ("torch", "triton"):
        proc = EagleProcessor.from_pretrained(tiny_ckpt, kernels=backend)
        proc.tiling = replace(proc.tiling, tile_size=28, max_tiles=4)  # tiny tiles: the interpreter is slow
        out[backend], plans = proc.preprocess_images([fixtures_dir / "images" / "rgba_200x150.png"])
    assert calls[0] == 1
    assert out["triton"].shape == (plans[0].num_tiles, 3, 28, 28)
    assert torch.equal(out["triton"], out["torch"])
