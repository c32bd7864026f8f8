"""Every YAML under conf/ composes against the typed schema and builds on CPU (with tiny overrides)."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch
from train_helpers import tiny_overrides

from nemo_eagle.training.build import build_run
from nemo_eagle.training.precision import PrecisionUnavailable
from nemo_eagle.training.run import CONF_DIR, load_run
from nemo_eagle.training.run import main as train_main

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def _fixups(group: str, option: str, tiny_ckpt, tmp_path, color_data) -> list[str]:
    """What a CPU test machine needs on top of the option: no hub, no GPU, a shard for WebDataset."""
    if group == "model" and option != "tiny":
        return [f"model={option}", f"model.pretrained={tiny_ckpt}", "data.high_res_max_tiles=1"]
    if group == "trainer" and option != "cpu_debug":
        return [f"trainer={option}", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto"]
    if group == "data" and option == "webdataset":
        shard = tmp_path / "s-000000.tar"
        with tarfile.open(shard, "w") as tar:
            for line in (color_data / "train.jsonl").read_text().splitlines():
                rec = json.loads(line)
                tar.add(color_data / rec["image"], arcname=f"{rec['id']}.png")
                (tmp_path / f"{rec['id']}.json").write_text(line)
                tar.add(tmp_path / f"{rec['id']}.json", arcname=f"{rec['id']}.json")
        return [f"data={option}", f"data.train_manifest={shard}"]
    return [f"{group}={option}"]


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(group, option, tiny_ckpt, color_data, tmp_path):
    base = tiny_overrides(tiny_ckpt, color_data, tmp_path / "exp", "data.micro_batch_size=2")
    run = load_run(base + _fixups(group, option, tiny_ckpt, tmp_path, color_data))
    if group == "precision" and option == "fp8_te" and not torch.cuda.is_available():
        with pytest.raises(PrecisionUnavailable, match="fp8_te needs an NVIDIA GPU with Transformer Engine"):
            build_run(run)
        return
    built = build_run(run)
    model, trainer = built.model, built.trainer
    batch = next(iter(model.train_dataloader()))
    assert batch["num_samples"] >= 1
    trainable = {n.split(".")[0] for n, p in model.model.named_parameters() if p.requires_grad}
    if group == "recipe":
        want = {"projector"} if option == "stage1_projector" else {"vision", "projector", "language_model"}
        assert trainable == want, (option, trainable)
        assert run.stage == option
    if group == "peft" and option == "lora":
        lora = [n for n, p in model.model.named_parameters() if p.requires_grad and "lora_" in n]
        assert any(n.startswith("language_model.") for n in lora) and any(n.startswith("vision.") for n in lora)
    if group == "precision" and option == "bf16":
        assert trainer.precision == "bf16-mixed"
    if group == "trainer":
        assert trainer.max_steps == run.trainer.max_steps


def test_model_kernels_reach_the_model(tiny_ckpt, color_data, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    from nemo_eagle.ops import reference

    def projector_impl(backend):
        run = load_run(tiny_overrides(tiny_ckpt, color_data, tmp_path / backend, f"model.kernels={backend}"))
        return build_run(run).model.model.projector.impl

    assert projector_impl("torch") is reference.project_tokens
    assert projector_impl("triton") is not reference.project_tokens  # bound once at build (runs on a GPU)


def test_the_default_train_yaml_composes():
    run = load_run(["data.train_manifest=x.jsonl"])
    assert run.model.pretrained == "nvidia/Eagle2-1B" and run.precision.recipe == "bf16_mixed"
    assert run.stage == "stage2_sft" and run.trainer.accelerator == "gpu"
    stage1 = load_run(["data.train_manifest=x.jsonl", "recipe=stage1_projector"])
    assert (stage1.model.freeze.vision, stage1.model.freeze.projector, stage1.model.freeze.llm) == (True, False, True)


@pytest.mark.parametrize("override,message", [
    ("data.micro_batchsize=2", "micro_batchsize"),            # typo in a key
    ("precision=fp9", "fp9"),                                  # unknown group option
    ("trainer.max_steps=lots", "max_steps"),                   # wrong type
    ("data.on_bad_sample=ignore", "on_bad_sample"),            # value outside the allowed set
    ("model.kernels=cuda", "model.kernels"),
])
def test_typos_fail_with_a_clear_message(override, message, capsys):
    assert train_main(["data.train_manifest=x.jsonl", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nemo-eagle train: error:") and message in err


def test_cli_stops_on_bad_data_when_asked(tiny_ckpt, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "lost-1", "image": "nowhere.png", "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}) + "\n")
    args = tiny_overrides(tiny_ckpt, tmp_path, tmp_path / "exp", "data.on_bad_sample=error")
    args = [
        a if not a.startswith("data.train_manifest=") else f"data.train_manifest={tmp_path / 'bad.jsonl'}" for a in args
    ]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert "bad sample 'lost-1'" in err and "image file not found" in err


def test_cli_prints_the_composed_config(capsys):
    assert train_main(["--cfg", "job", "model=tiny", "model.tokenizer_from=x", "data.train_manifest=d.jsonl"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer_from: x" in out and "train_manifest: d.jsonl" in out
