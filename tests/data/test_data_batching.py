"""Collation (padded / packed), token budgets, mixture of resolution, sharding and resumable iteration."""

from __future__ import annotations

import pytest
from data_helpers import llava, write_image, write_jsonl

from nemo_eagle.data.collate import EagleCollator, block_causal_mask
from nemo_eagle.data.datasets import ConversationDataset
from nemo_eagle.training.loader import BatchPlanner, PlanConfig, ResumableLoader


@pytest.fixture
def dataset(tmp_path, small_processor):
    sizes = [(28, 28), (56, 28), (84, 28), (28, 112), (56, 56), (28, 28)]
    recs = []
    for i, size in enumerate(sizes):
        write_image(tmp_path / f"{i}.png", size, (i * 40, 0, 0))
        recs.append(llava(f"s{i}", f"{i}.png", [("human", "<image>\n" + "q" * (i + 1)), ("gpt", "answer " * (i + 1))]))
    return ConversationDataset(str(write_jsonl(tmp_path / "d.jsonl", recs)), small_processor)


def test_padded_and_packed_layouts(dataset, small_processor):
    samples = [dataset[(0, 4)], dataset[(3, 4)]]
    n0, n1 = (int(s["input_ids"].numel()) for s in samples)
    pad = small_processor.tokenizer.pad_token_id
    padded = EagleCollator(pad)(samples)
    assert padded["input_ids"].shape == (2, max(n0, n1))
    assert padded["attention_mask"].sum(1).tolist() == [n0, n1]
    assert padded["pixel_values"].shape[0] == sum(samples[0]["num_tiles"] + samples[1]["num_tiles"])
    packed = EagleCollator(pad, pack=True, pad_to_multiple_of=8)(samples)
    total = packed["input_ids"].shape[1]
    assert total % 8 == 0 and total >= n0 + n1
    pos = packed["position_ids"][0].tolist()
    assert pos[:n0] == list(range(n0)) and pos[n0:n0 + n1] == list(range(n1))  # positions restart per sample
    assert packed["labels"][0, n0].item() == -100  # no loss across the boundary
    assert packed["attention_mask"] is None
    assert packed["num_tokens"] == n0 + n1
    block = EagleCollator(pad, pack=True, packing_mask="block")(samples)["attention_mask"]
    assert block.shape == (1, 1, n0 + n1, n0 + n1)
    assert not block[0, 0, n0:, :n0].any() and block[0, 0, n0 + 3, n0:n0 + 4].all()


def test_block_mask_is_block_causal():
    m = block_causal_mask([2, 3])[0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


@pytest.mark.parametrize("multiple", [1, 16])
@pytest.mark.parametrize("packing", [False, True])
def test_token_budget_is_respected(dataset, small_processor, packing, multiple):
    budget = 90
    planner = BatchPlanner(dataset, PlanConfig(micro_batch_size=4, max_tokens_per_batch=budget, packing=packing,
                                               high_res_max_tiles=4, seed=3, pad_to_multiple_of=multiple))
    plan = planner.plan(0)
    assert sorted(i for b in plan for i, _ in b) == list(range(len(dataset)))
    collate = EagleCollator(small_processor.tokenizer.pad_token_id, pack=packing, pad_to_multiple_of=multiple)
    for batch in plan:
        ids = collate([dataset[item] for item in batch])["input_ids"]  # the tensor the model really gets
        assert ids.numel() <= budget and len(batch) <= 4


def test_mixture_of_resolution(dataset):
    def views(ratio, epoch=0, seed=0):
        p = BatchPlanner(dataset, PlanConfig(micro_batch_size=2, low_res_ratio=ratio, high_res_max_tiles=4, seed=seed))
        return {i: t for b in p.plan(epoch) for i, t in b}

    assert set(views(1.0).values()) == {1}
    assert set(views(0.0).values()) == {4}
    draws = [views(0.5, epoch=e) for e in range(20)]
    low = sum(v == 1 for d in draws for v in d.values()) / (20 * len(dataset))
    assert 0.3 < low < 0.7
    assert views(0.5, epoch=3) == views(0.5, epoch=3)  # deterministic in (seed, epoch)
    assert any(views(0.5, epoch=e) != views(0.5, epoch=0) for e in range(1, 5))
    # a high-res view that does not fit the budget is lowered until it does
    tight = BatchPlanner(dataset, PlanConfig(micro_batch_size=1, max_tokens_per_batch=dataset.num_tokens(3, 2),
                                             high_res_max_tiles=4))
    assert tight.view(3, low=False) == (2, dataset.num_tokens(3, 2))


def test_too_long_samples_follow_the_bad_sample_policy(dataset):
    short = min(dataset.num_tokens(i, 1) for i in range(len(dataset)))
    planner = BatchPlanner(dataset, PlanConfig(max_tokens_per_batch=short, high_res_max_tiles=4))
    assert 0 < len(planner.eligible) < len(dataset) and dataset.report.skipped["too_long"] > 0


def test_ranks_get_disjoint_equal_shards(dataset):
    cfg = PlanConfig(micro_batch_size=1, high_res_max_tiles=4, seed=5)
    plans = [BatchPlanner(dataset, cfg, rank=r, world_size=4).plan(0) for r in range(4)]
    assert len({len(p) for p in plans}) == 1
    seen = [i for p in plans for b in p for i, _ in b]
    assert len(seen) == len(set(seen)) == 4  # 6 batches -> 4 usable for 4 ranks


def test_loader_resumes_after_the_last_consumed_batch(dataset, small_processor):
    def loader():
        planner = BatchPlanner(dataset, PlanConfig(micro_batch_size=2, high_res_max_tiles=4, seed=1, low_res_ratio=0.5))
        return ResumableLoader(dataset, planner, EagleCollator(small_processor.tokenizer.pad_token_id))

    full = loader()
    reference = [b["sample_ids"] for b in iter(full)]  # epoch 0: 3 batches
    assert len(reference) == 3
    reference += [b["sample_ids"] for b in iter(full)]  # epoch 1: another order and other views
    first = loader()
    it = iter(first)
    b0 = next(it)
    first.mark_consumed(b0["position"])
    next(it)  # prefetched but never trained on: not part of the state
    state = first.state_dict()
    assert state["epoch"] == 0 and state["next"] == 1
    resumed = loader()
    resumed.load_state_dict(state)
    got = [b0["sample_ids"]] + [b["sample_ids"] for b in iter(resumed)] + [b["sample_ids"] for b in iter(resumed)]
    assert got == reference and reference[:3] != reference[3:]
