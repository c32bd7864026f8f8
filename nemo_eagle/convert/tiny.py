"""A small RANDOM checkpoint in the official HF Eagle2 layout, for smoke tests and CI.

It has a real byte-level BPE tokenizer (Qwen2 pre-tokenizer regex, trained here on a few sentences) with the
Eagle2 special tokens, and random weights. It is clearly labelled as random: it answers gibberish.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from nemo_eagle.config import EagleConfig, LLMConfig, ProjectorConfig, TilingConfig, VisionConfig

QWEN2_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<img>", "</img>", "<IMG_CONTEXT>", "<quad>",
    "</quad>", "<ref>", "</ref>", "<box>", "</box>",
]
_CORPUS = [
    "You are a helpful assistant.",
    "Describe this image in detail.",
    "What is in the picture?",
    "The image shows a chart with numbers 0 1 2 3 4 5 6 7 8 9 and a title.",
    "A red circle next to a blue square.",
    "Answer the question using a single word or phrase.",
    "What is the revenue in 2023?",
    "passage: query: user assistant system",
    "image <image 1> image 2 document page table figure caption text",
    "yes no true false left right top bottom",
]
RANDOM_LABEL = "RANDOM WEIGHTS: a tiny untrained Eagle2-layout checkpoint for smoke tests; its answers are meaningless."


def build_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """A byte-level BPE with the Qwen2 pre-tokenizer and the Eagle2 special tokens appended after the vocab."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def tiny_config(llm_family: str = "qwen2", *, vocab_size: int, image_token_id: int, image_size: int = 448,
                patch_size: int = 14, hidden: int = 64, layers: int = 2) -> EagleConfig:
    """A tiny EagleConfig of the given LLM family (qwen2, llama, nemotron)."""
    extra: dict = {}
    if llm_family == "nemotron":
        extra = {"norm_eps": 1e-5, "partial_rotary_factor": 0.5}
    elif llm_family not in ("qwen2", "llama"):
        raise ValueError(f"unknown LLM family {llm_family!r}; choose qwen2, llama or nemotron")
    llm = LLMConfig(
        model_type=llm_family, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * hidden, vocab_size=vocab_size, max_position_embeddings=8192,
        rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="relu2" if llm_family == "nemotron" else "silu",
        tie_word_embeddings=llm_family != "nemotron", extra=extra,
    )
    vision = VisionConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        image_size=image_size,
        patch_size=patch_size,
    )
    return EagleConfig(vision=vision, projector=ProjectorConfig(), llm=llm, tiling=TilingConfig(tile_size=image_size),
                       image_token_id=image_token_id)


def create_tiny(out: str | Path, *, llm_family: str = "qwen2", seed: int = 0, image_size: int = 448,
                patch_size: int = 14, dtype: torch.dtype = torch.float32) -> Path:
    """Write a tiny random checkpoint (config, weights, tokenizer, processor files) to ``out``."""
    from nemo_eagle.data.processor import EagleProcessor, EagleTokenizer
    from nemo_eagle.modeling.eagle import EagleModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = EagleTokenizer(build_tokenizer())
    cfg = tiny_config(llm_family, vocab_size=tok.vocab_size, image_token_id=tok.image_token_id,
                      image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    model = EagleModel(cfg).to(dtype)
    with torch.no_grad():  # make the projector and norms non-trivial so parity tests see every parameter
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    EagleProcessor(tok, cfg.tiling, tokens_per_tile=cfg.tokens_per_tile).save_pretrained(out)
    (out / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": cfg.llm.max_position_embeddings, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "tokenizer_class": "Qwen2Tokenizer"}, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": tok.eos_token_id,
                                                            "pad_token_id": tok.pad_token_id}, indent=2))
    (out / "README.md").write_text(f"# tiny Eagle2 checkpoint ({llm_family})\n\n{RANDOM_LABEL}\n")
    return out


def make_input_sensitive(ckpt_dir: str | Path, *, seed: int = 0, scale: float = 2.5) -> Path:
    """Redraw a checkpoint's weights (in place) so its greedy continuation depends on the prompt and on each image.

    At the usual init scale a tiny random model is input-blind: the residual stream is dominated by the last token's
    embedding and greedy decoding repeats one token whatever the input, so tests comparing two runs of generation
    cannot fail. Here every matrix (and conv kernel) is drawn from N(0, (scale / sqrt(fan_in))^2), norm weights from
    1 + N(0, 0.3^2) and other vectors from N(0, 0.3^2): attention and MLPs then mix the whole context, and small
    changes of the prompt, of one image or of the image order change the continuation. Works on any layout (every
    tensor of every ``*.safetensors`` file is redrawn, names and shapes kept); deterministic for a given seed.
    The result is still random: its answers are meaningless text.
    """
    from safetensors.torch import load_file, save_file

    ckpt_dir = Path(ckpt_dir)
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {ckpt_dir}")
    gen = torch.Generator().manual_seed(seed)
    for file in files:
        tensors = load_file(file)
        new = {}
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point():
                new[name] = t
                continue
            if t.dim() >= 2:
                x = torch.randn(t.shape, generator=gen) * (scale / t[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                x = 1 + 0.3 * torch.randn(t.shape, generator=gen)
            else:
                x = 0.3 * torch.randn(t.shape, generator=gen)
            new[name] = x.to(t.dtype).contiguous()
        save_file(new, file, metadata={"format": "pt"})
    readme = ckpt_dir / "README.md"
    note = f"Weights redrawn by make_input_sensitive(seed={seed}, scale={scale}): input-sensitive, still random.\n"
    readme.write_text((readme.read_text() + "\n" if readme.exists() else "") + note)
    return ckpt_dir
