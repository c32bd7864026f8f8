"""conf/model/eagle2_9b.yaml trains on the tiny Eagle2-9B checkpoint on CPU: each vision branch frozen or trained
on its own, LoRA on either branch, the ConvNeXt kept in bf16; the .nemo it leaves loads and answers."""

from __future__ import annotations

import pytest
import torch
from train_helpers import QUESTION

from nemo_eagle.data.processor import EagleProcessor
from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.run import load_run, train


@pytest.fixture(scope="module")
def nine_ckpt(fixtures_dir):
    return fixtures_dir / "eagle2-9b" / "tiny-eagle2-9b"


def _overrides(ckpt, data, exp, *extra):
    return ["model=eagle2_9b", f"model.pretrained={ckpt}", f"data.train_manifest={data / 'train.jsonl'}",
            "trainer=cpu_debug", "precision=fp32", "data.num_workers=0", "trainer.enable_progress_bar=false",
            "trainer.max_steps=2", "trainer.val_check_interval=2", "optim.warmup_steps=0", "optim.lr=1e-3",
            "data.micro_batch_size=2", f"exp_dir={exp}", *extra]


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in keys)


@pytest.mark.parametrize("case", ["convnext_frozen", "siglip_frozen", "lora_convnext", "packed_lora_siglip"])
def test_eagle2_9b_recipe_trains_each_branch_separately(case, nine_ckpt, color_data, tmp_path):
    extra = {"convnext_frozen": ["model.freeze.convnext=true"],
             "siglip_frozen": ["model.freeze.vision=true", "model.freeze.convnext=false"],
             "lora_convnext": ["peft=lora_convnext", "model.freeze.vision=true"],
             # packing + mixture of resolution, LoRA on the SigLIP branch, the ConvNeXt frozen
             "packed_lora_siglip": ["data=packed", "data.max_tokens_per_batch=2048", "data.low_res_ratio=0.5",
                                    "peft=lora", "model.freeze.convnext=true"]}[case]
    run = load_run(_overrides(nine_ckpt, color_data, tmp_path / "exp", *extra))
    assert run.model.convnext_dtype == "bfloat16"
    before = {k: v.clone() for k, v in EagleModel.from_pretrained(nine_ckpt, dtype=torch.float32).state_dict().items()}
    result = train(run)
    if case == "packed_lora_siglip":  # the micro-batch of two conversations rides in one packed row
        batch = next(iter(result.model.train_dataloader()))
        assert batch["input_ids"].shape[0] == 1 and int(batch["num_samples"]) == 2, batch["input_ids"].shape
    inner = result.model.model
    assert inner.vision.convnext.dtype == torch.bfloat16  # kept in bf16, as NVIDIA's code keeps it
    assert inner.vision.tower.embeddings.patch_embedding.weight.dtype == torch.float32

    model = EagleModel.from_pretrained(result.nemo_path, dtype=torch.float32)
    after = model.state_dict()
    siglip = "vision.tower.encoder."
    convnext = "vision.convnext.model.encoder."
    if case == "convnext_frozen":
        assert _changed(before, after, siglip) and not _changed(before, after, convnext)
    elif case == "siglip_frozen":
        assert _changed(before, after, convnext) and not _changed(before, after, siglip)
    elif case == "lora_convnext":  # LoRA on the ConvNeXt, merged into its weights in the export; SigLIP frozen
        assert _changed(before, after, convnext + "stages.0.layers.0.pwconv1.") and not _changed(before, after, siglip)
        assert not _changed(before, after, convnext + "stages.0.layers.0.dwconv.")  # not a LoRA target, frozen
    else:  # LoRA on SigLIP's attention / MLP, merged; its norms and the whole ConvNeXt frozen
        assert _changed(before, after, siglip + "layers.0.self_attn.q_proj.") and not _changed(before, after, convnext)
        assert not _changed(before, after, siglip + "layers.0.layer_norm1.")
    for k in ("vision.convnext.head_fc.weight", "vision.tower.head.probe"):  # unused heads never train
        assert torch.equal(before[k], after[k].to(before[k].dtype)), k
    assert _changed(before, after, "projector.")

    # the .nemo keeps the 9B preprocessing contract and generates through it
    proc = EagleProcessor.from_pretrained(result.nemo_path)
    assert (proc.tiling.prompt_format, proc.tiling.resize, proc.tiling.alpha) == ("qwen2_chat", "pil", "drop")
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    )
    batch = proc(text=prompt, images=[str(color_data / "images" / "red.png")])
    assert model.generate(**batch, max_new_tokens=2).shape == (1, 2)
