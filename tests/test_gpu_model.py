"""GPU tier of the reference model: the fixtures on CUDA (fp32 and bf16) and cached generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from nemo_eagle import EagleModel, EagleProcessor

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-3), (torch.bfloat16, 0.25)])
def test_fixture_logits_on_cuda(tiny_ckpt, fixtures_dir, dtype, atol):
    proc = EagleProcessor.from_pretrained(tiny_ckpt)
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=dtype, device="cuda")
    ref = np.load(fixtures_dir / "expected" / "rgb_640x480.npz")
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in detail."}]}]
    )
    batch = proc(text=prompt, images=[Image.open(fixtures_dir / "images" / "rgb_640x480.png")]).to("cuda")
    with torch.no_grad():
        logits = model(**batch).logits[:, torch.from_numpy(ref["logits_positions"]).cuda()].float().cpu()
    torch.testing.assert_close(logits, torch.from_numpy(ref["logits"]), atol=atol, rtol=0)


def test_cached_generation_on_cuda(tiny_ckpt, fixtures_dir):
    proc = EagleProcessor.from_pretrained(tiny_ckpt)
    model = EagleModel.from_pretrained(tiny_ckpt, dtype=torch.float32, device="cuda")
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    )
    batch = proc(text=prompt, images=[Image.open(fixtures_dir / "images" / "wide_1280x320.png")]).to("cuda")
    assert torch.equal(
        model.generate(**batch, max_new_tokens=8), model.generate(**batch, max_new_tokens=8, use_cache=False)
    )
