"""Tensor, pipeline and data parallel on two CPU ranks (gloo) against one rank; TP=2 checkpoints load at TP=1."""

from __future__ import annotations

import pytest
import torch
from megatron_helpers import megatron_from_hf, microbatches, parallel_worker, run_layout

from nemo_eagle.megatron import parallel


@pytest.fixture(scope="module")
def two_rank_results(tiny_ckpt, fixtures_dir, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("megatron-tp2")
    results = parallel.launch(parallel_worker, 2, str(tiny_ckpt), str(fixtures_dir), str(save_dir))
    return results, save_dir


@pytest.fixture(scope="module")
def single_rank(tiny_ckpt, fixtures_dir):
    from megatron_cpu_shim import megatron_on_cpu

    with megatron_on_cpu():
        try:
            return run_layout(tiny_ckpt, microbatches(fixtures_dir), tp=1, pp=1)
        finally:
            parallel.shutdown()


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp2"])
def test_two_ranks_match_one_rank(two_rank_results, single_rank, layout):
    results, _ = two_rank_results
    for rank in results:
        got = rank[layout]
        # the same token-mean loss before the step, the same gradients, the same update
        assert got["loss_before"] == pytest.approx(single_rank["loss_before"], rel=1e-5)
        assert got["grad_norm"] == pytest.approx(single_rank["grad_norm"], rel=1e-4)
        assert got["loss_after"] == pytest.approx(single_rank["loss_after"], rel=1e-4)
    assert single_rank["loss_after"] < single_rank["loss_before"]


def test_tp2_logits_match_tp1(two_rank_results, single_rank):
    results, _ = two_rank_results
    for rank in results:
        torch.testing.assert_close(rank["tp2"]["logits"], single_rank["logits"], atol=1e-4, rtol=0)


def test_checkpoint_saved_at_tp2_loads_at_tp1(two_rank_results, single_rank, megatron_cpu, tiny_ckpt, fixtures_dir):
    from nemo_eagle.megatron import checkpoint
    from nemo_eagle.megatron.convert import load_megatron

    results, save_dir = two_rank_results
    assert results[0]["convert"]["tensor_parallel"] == 2
    assert checkpoint.read_meta(save_dir)["saved_with"] == {"tensor_parallel": 2, "pipeline_parallel": 1}
    model = load_megatron(save_dir)  # TP=1, PP=1
    mb = microbatches(fixtures_dir)[0]
    with torch.no_grad():
        logits = model.gather_logits(model(mb["input_ids"], mb["pixel_values"]))
    torch.testing.assert_close(logits, single_rank["logits"], atol=1e-4, rtol=0)
    reference = megatron_from_hf(tiny_ckpt).state_dict()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference if not k.endswith("_extra_state"))
