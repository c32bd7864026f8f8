"""The ``.nemo`` file of an EAGLE2 model, and conversions between it and the official HF layout.

A ``.nemo`` is an uncompressed tar, as NeMo writes it, holding:
  ``model_config.yaml``   the ModelPT config: ``target``, ``eagle`` (the EagleConfig), ``attn_implementation``
  ``model_weights.ckpt``  ``torch.save`` of the state dict (keys ``model.<EagleModel parameter name>``)
  ``processor/``          the preprocessing contract: tokenizer, chat template, preprocessor/processor configs
                          and the HF ``config.json`` the weights came from

``EagleNeMoModel.save_to`` / ``restore_from`` read and write exactly this. Loading it as a plain
``EagleModel`` (``load_nemo_as_eagle``) and converting to and from HF directories needs no NeMo import, and
tensors pass through unchanged, so HF -> .nemo -> HF is bitwise.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from nemo_eagle.config import EagleConfig, config_from_hf, config_to_hf, load_model_config
from nemo_eagle.convert import hf as hf_io

log = logging.getLogger(__name__)

MODEL_CONFIG = "model_config.yaml"
MODEL_WEIGHTS = "model_weights.ckpt"
PROCESSOR_DIR = "processor"
TARGET = "nemo_eagle.nemo_model.EagleNeMoModel"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "model."
# Files of an HF checkpoint directory that make up the preprocessing contract (config.json included).
CONTRACT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.json", "merges.txt", "chat_template.json", "preprocessor_config.json",
                  "processor_config.json", "generation_config.json")


class NemoFileError(ValueError):
    """A ``.nemo`` file that is not an EAGLE2 model archive; the message says what is wrong."""


def model_config_dict(cfg: EagleConfig, *, attn_implementation: str = "sdpa") -> dict[str, Any]:
    """The ModelPT config stored as ``model_config.yaml`` (also what ``EagleNeMoModel`` is built from)."""
    from nemo_eagle import __version__

    return {"target": TARGET, "eagle": _plain(cfg.to_dict()), "attn_implementation": attn_implementation,
            "processor_dir": PROCESSOR_DIR, "format_version": FORMAT_VERSION, "nemo_eagle_version": __version__}


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def eagle_config_from_model_config(mc: dict[str, Any]) -> EagleConfig:
    if "eagle" not in mc:
        raise NemoFileError(f"{MODEL_CONFIG} has no 'eagle' section: not an EAGLE2 .nemo file")
    return EagleConfig.from_dict(dict(mc["eagle"]))


# ------------------------------------------------------------------------------------------------- files
def processor_files_from_dir(path: str | Path, *, tokenizer_only: bool = False) -> dict[str, bytes]:
    """The contract files present in an HF checkpoint directory (``tokenizer_only``: tokenizer + chat template)."""
    path = Path(path)
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}: need an HF Eagle2 checkpoint directory")
    names = CONTRACT_FILES
    if tokenizer_only:
        names = tuple(n for n in names if n not in ("config.json", "preprocessor_config.json", "processor_config.json"))
    return {n: (path / n).read_bytes() for n in names if (path / n).exists()}


def write_nemo(path: str | Path, *, model_config: dict[str, Any], state_dict: dict[str, torch.Tensor],
               processor_files: dict[str, bytes]) -> Path:
    """Write a ``.nemo`` archive atomically. ``state_dict`` keys are EagleModel names (no ``model.`` prefix)."""
    path = Path(path)
    if path.suffix != ".nemo":
        raise ValueError(f"a .nemo path must end in .nemo, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".nemo_tmp_") as tmp:
        tmp = Path(tmp)
        (tmp / MODEL_CONFIG).write_text(yaml.safe_dump(_plain(model_config), sort_keys=False))
        torch.save({WEIGHT_PREFIX + k: v for k, v in state_dict.items()}, tmp / MODEL_WEIGHTS)
        (tmp / PROCESSOR_DIR).mkdir()
        for name, data in sorted(processor_files.items()):
            (tmp / PROCESSOR_DIR / name).write_bytes(data)
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w:") as tar:
            tar.add(tmp, arcname=".")
        os.replace(partial, path)
    return path


@dataclass
class NemoContents:
    model_config: dict[str, Any]
    eagle: EagleConfig
    processor_files: dict[str, bytes]
    state_dict: dict[str, torch.Tensor] | None  # EagleModel names (prefix stripped)


def _member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    for cand in (name, f"./{name}"):
        try:
            return tar.getmember(cand)
        except KeyError:
            continue
    return None


def read_nemo(path: str | Path, *, weights: bool = True) -> NemoContents:
    """Read a ``.nemo`` archive (weights memory-mapped from a temporary extraction when ``weights``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".nemo file not found: {path}")
    if not tarfile.is_tarfile(path):
        raise NemoFileError(f"{path} is not a .nemo archive (not a tar file)")
    with open(path, "rb") as f:
        mode = "r:gz" if f.read(2) == b"\x1f\x8b" else "r:"  # NeMo < 1.7 compressed its archives
    with tarfile.open(path, mode) as tar:
        info = _member(tar, MODEL_CONFIG)
        if info is None:
            raise NemoFileError(f"{path} has no {MODEL_CONFIG}: not a NeMo model archive")
        mc = yaml.safe_load(tar.extractfile(info).read())
        eagle = eagle_config_from_model_config(mc)
        pdir = str(mc.get("processor_dir", PROCESSOR_DIR))
        files = {}
        for m in tar.getmembers():
            name = m.name.removeprefix("./")
            if m.isfile() and name.startswith(pdir + "/"):
                files[name[len(pdir) + 1:]] = tar.extractfile(m).read()
        state = None
        if weights:
            winfo = _member(tar, MODEL_WEIGHTS)
            if winfo is None:
                raise NemoFileError(f"{path} has no {MODEL_WEIGHTS}")
            with tempfile.TemporaryDirectory(prefix="nemo_eagle_w_") as tmp:
                wpath = Path(tmp) / MODEL_WEIGHTS
                with tar.extractfile(winfo) as src, open(wpath, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=16 * 2**20)
                raw = torch.load(wpath, map_location="cpu", weights_only=True, mmap=True)
            state = {}
            for k, v in raw.items():
                if not k.startswith(WEIGHT_PREFIX):
                    raise NemoFileError(f"{path}: unexpected weight name {k!r} (expected the {WEIGHT_PREFIX!r} prefix)")
                state[k[len(WEIGHT_PREFIX):]] = v
    return NemoContents(model_config=mc, eagle=eagle, processor_files=files, state_dict=state)


_EXTRACTED: list[str] = []


@atexit.register
def _cleanup() -> None:
    for d in _EXTRACTED:
        shutil.rmtree(d, ignore_errors=True)


def materialize_processor_dir(files: dict[str, bytes], cfg: EagleConfig) -> Path:
    """A directory (alive until the process exits) holding the contract files, usable as an HF processor dir."""
    d = tempfile.mkdtemp(prefix="nemo_eagle_processor_")
    _EXTRACTED.append(d)
    for name, data in files.items():
        (Path(d) / name).write_bytes(data)
    if "config.json" not in files:
        (Path(d) / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
    return Path(d)


# ------------------------------------------------------------------------------------------------ loading
def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    tied = model.config.llm.tie_word_embeddings if hasattr(model, "config") else False
    optional = {"language_model.lm_head.weight"} if tied else set()
    missing = sorted(set(own) - set(state) - optional)
    unexpected = sorted(set(state) - set(own))
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
           if state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}" + (f" (+{len(missing) - 8})" if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:8])}")
    if bad:
        problems.append("shape mismatch " + "; ".join(bad[:8]))
    if problems:
        raise hf_io.CheckpointError(f"{source} does not match the model config: " + "; ".join(problems))
    with torch.no_grad():
        for k, t in state.items():
            own[k].copy_(t)


def load_nemo_as_eagle(path: str | Path, *, dtype: torch.dtype | str | None = None,
                       device: str | torch.device | None = None, attn_implementation: str = "sdpa"):
    """An ``EagleModel`` (eval mode, tokenizer attached) from a ``.nemo`` file; no NeMo import needed."""
    from nemo_eagle.data.processor import EagleTokenizer
    from nemo_eagle.modeling.eagle import EagleModel, _resolve_dtype

    contents = read_nemo(path)
    cfg, state = contents.eagle, contents.state_dict
    dtype = _resolve_dtype(dtype, state)
    model = EagleModel(cfg, attn_implementation=attn_implementation, dtype=dtype)
    load_state_dict_checked(model, state, str(path))
    if cfg.llm.tie_word_embeddings:
        model.language_model.tie_weights()
    model.source_dir = materialize_processor_dir(contents.processor_files, cfg)
    if "tokenizer.json" in contents.processor_files:
        model.tokenizer = EagleTokenizer.from_file(model.source_dir / "tokenizer.json")
        if cfg.image_token_id is None:
            model.config.image_token_id = model.tokenizer.image_token_id
    model.eval()
    if device is not None:
        model.to(device)
    log.info("loaded %s (%s, %s, attention=%s)", path, cfg.llm.model_type, dtype, attn_implementation)
    return model


def load_nemo_processor(path: str | Path, **kwargs: Any):
    """The ``EagleProcessor`` stored in a ``.nemo`` file (the checkpoint's own tiling and prompt format)."""
    from nemo_eagle.data.processor import EagleProcessor

    contents = read_nemo(path, weights=False)
    return EagleProcessor.from_pretrained(materialize_processor_dir(contents.processor_files, contents.eagle),
                                          config=contents.eagle, **kwargs)


# ---------------------------------------------------------------------------------------------- converting
def hf_to_nemo(src: str | Path, dst: str | Path, *, attn_implementation: str = "sdpa") -> Path:
    """HF checkpoint directory (or hub id) -> ``.nemo``; tensors keep their dtype and bits."""
    from nemo_eagle.hub import resolve_checkpoint
    from nemo_eagle.modeling.eagle import EagleModel

    src = resolve_checkpoint(src)
    stored = _stored_float_dtypes(Path(src))
    dtype = None
    if len(stored) > 1:  # one model dtype cannot hold them all: keep every value exactly, in float32
        dtype = torch.float32
        log.warning("%s mixes tensor dtypes (%s); the .nemo stores every tensor as float32 (values unchanged)",
                    src, ", ".join(sorted(stored)))
    model = EagleModel.from_pretrained(src, dtype=dtype, attn_implementation=attn_implementation)
    return write_nemo(dst, model_config=model_config_dict(model.config, attn_implementation=attn_implementation),
                      state_dict=model.state_dict(), processor_files=processor_files_from_dir(src))


def _stored_float_dtypes(path: Path) -> set[str]:
    """The floating-point dtypes of a checkpoint's safetensors files, read from their headers only."""
    from safetensors import safe_open

    found = set()
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            found |= {st.get_slice(k).get_dtype() for k in st.keys()}  # noqa: SIM118 (not a dict)
    return {d for d in found if d.startswith(("F", "BF"))}


def nemo_to_hf(src: str | Path, dst: str | Path, *, max_shard_bytes: int = 5 * 2**30) -> Path:
    """``.nemo`` -> official HF layout (config.json, model.safetensors, processor files), bitwise tensors."""
    contents = read_nemo(src)
    return write_hf(dst, cfg=contents.eagle, state=contents.state_dict, processor_files=contents.processor_files,
                    max_shard_bytes=max_shard_bytes)


def write_hf(dst: str | Path, *, cfg: EagleConfig, state: dict[str, torch.Tensor], processor_files: dict[str, bytes],
             max_shard_bytes: int = 5 * 2**30) -> Path:
    """EagleModel-named tensors + contract files -> an HF checkpoint directory (tied ``lm_head`` omitted)."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    vt = hf_io.vision_prefix(state)
    tied = cfg.llm.tie_word_embeddings
    tensors = {hf_io.ours_to_hf(k, vt): t.detach().contiguous() for k, t in state.items()
               if not (tied and k == "language_model.lm_head.weight")}
    hf_io.write_safetensors(tensors, dst, max_shard_bytes=max_shard_bytes)
    files = dict(processor_files)
    original = files.pop("config.json", None)
    (dst / "config.json").write_bytes(_hf_config_bytes(original, cfg, state))
    for name, data in files.items():
        (dst / name).write_bytes(data)
    return dst


def _hf_config_bytes(original: bytes | None, cfg: EagleConfig, state: dict[str, torch.Tensor]) -> bytes:
    """The stored HF config.json verbatim when it still describes ``cfg``, else a fresh one."""
    if original is not None:
        try:
            if config_from_hf(json.loads(original)).to_dict() == EagleConfig.from_dict(cfg.to_dict()).to_dict():
                return original
        except (ValueError, KeyError):
            pass
        log.info("the model config changed since import; writing a new config.json")
    hf = config_to_hf(cfg)
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    hf["torch_dtype"] = str(floats[0] if floats else torch.float32).removeprefix("torch.")
    return json.dumps(hf, indent=2).encode()


def is_nemo(path: str | Path) -> bool:
    return str(path).endswith(".nemo")


def load_config_any(path: str | Path) -> EagleConfig:
    """The EagleConfig of an HF directory or a ``.nemo`` file."""
    return read_nemo(path, weights=False).eagle if is_nemo(path) else load_model_config(path)

