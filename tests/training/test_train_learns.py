"""A tiny random model fine-tuned on CPU learns a synthetic dataset; the .nemo it leaves loads in EagleModel."""

from __future__ import annotations

import torch
from train_helpers import COLORS, ask, tiny_overrides

from nemo_eagle import EagleProcessor
from nemo_eagle.modeling.eagle import EagleModel
from nemo_eagle.training.callbacks import read_step_log
from nemo_eagle.training.run import load_run, train


def test_tiny_model_learns_colours_and_exports_a_nemo(tiny_ckpt, color_data, tmp_path):
    exp = tmp_path / "exp"
    run = load_run(tiny_overrides(
        tiny_ckpt, color_data, exp, "trainer.max_steps=40", "optim.lr=5e-3", "optim.scheduler=constant",
        "optim.warmup_steps=0", "data.micro_batch_size=4", f"data.val_manifest={color_data / 'train.jsonl'}",
        "trainer.val_check_interval=20", "checkpoint.every_n_train_steps=20"))
    result = train(run)

    losses = [r["loss"] for r in read_step_log(exp / "train_log.jsonl")]
    assert len(losses) == 40
    start, end = losses[0], sum(losses[-5:]) / 5
    assert start > 4.0 and end < start / 8, f"loss did not fall enough: {start:.3f} -> {end:.3f}"

    trainer = result.trainer
    assert float(trainer.callback_metrics["val_loss"]) < start / 8
    assert "tokens_per_s" in trainer.progress_bar_metrics and trainer.progress_bar_metrics["tokens_per_s"] > 0
    assert list((exp / "tb").glob("events.out.tfevents.*")), "no TensorBoard log"
    assert (exp / "checkpoints" / "last.ckpt").exists()

    # the final .nemo: a plain EagleModel with the checkpoint's processor answers from the image
    nemo = result.nemo_path
    assert nemo == exp / "model.nemo" and nemo.exists()
    model = EagleModel.from_pretrained(nemo)
    processor = EagleProcessor.from_pretrained(nemo)
    assert processor.tiling.tile_size == 28 and processor.tokens_per_tile == 1
    for name in COLORS:
        assert ask(model, processor, color_data / "images" / f"{name}.png") == name

    # ... and gives the same logits as the model that was trained in memory
    trained = result.model.model.eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    )
    batch = processor(text=prompt, images=[str(color_data / "images" / "red.png")])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, trained(**batch).logits)
