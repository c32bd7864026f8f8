"""GPU tier of the Eagle2-9B tower: NVIDIA's 9B fixture logits on CUDA (fp32, bf16, and the ConvNeXt alone in bf16
as NVIDIA's code keeps it) and cached generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor

pytestmark = pytest.mark.gpu
STEM = "wide_1920x1080"


def _case(fixtures_dir):
    nine = fixtures_dir / "eagle2-9b"
    proc = EagleProcessor.from_pretrained(nine / "tiny-eagle2-9b")
    prompt = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}])
    batch = proc(text=prompt, images=[Image.open(nine / "images" / f"{STEM}.png")]).to("cuda")
    return nine / "tiny-eagle2-9b", np.load(nine / "expected" / f"{STEM}.npz"), batch


@pytest.mark.parametrize("mode,atol", [("fp32", 2e-3), ("bf16", 0.25), ("convnext_bf16", 0.1)])
def test_9b_fixture_logits_on_cuda(fixtures_dir, mode, atol):
    ckpt, ref, batch = _case(fixtures_dir)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    model = EagleModel.from_pretrained(ckpt, dtype=dtype, device="cuda")
    if mode == "convnext_bf16":
        model.vision.convnext.to(torch.bfloat16)
    with torch.no_grad():
        logits = model(**batch).logits[:, torch.from_numpy(ref["logits_positions"]).cuda()].float().cpu()
    torch.testing.assert_close(logits, torch.from_numpy(ref["logits"]), atol=atol, rtol=0)


def test_9b_cached_generation_on_cuda(fixtures_dir):
    ckpt, _, batch = _case(fixtures_dir)
    model = EagleModel.from_pretrained(ckpt, dtype=torch.float32, device="cuda")
    assert torch.equal(
        model.generate(**batch, max_new_tokens=8), model.generate(**batch, max_new_tokens=8, use_cache=False)
    )
