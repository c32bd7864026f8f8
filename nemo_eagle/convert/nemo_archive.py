"""The ``.nemo`` archive of an EAGLE2 model: reading and writing it (no model or processor code needed).

A ``.nemo`` is an uncompressed tar, as NeMo writes it, holding:
  ``model_config.yaml``   the ModelPT config: ``target``, ``eagle`` (the EagleConfig), ``attn_implementation``
  ``model_weights.ckpt``  ``torch.save`` of the state dict (keys ``model.<EagleModel parameter name>``)
  ``processor/``          the preprocessing contract: tokenizer, chat template, preprocessor/processor configs
                          and the HF ``config.json`` the weights came from
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

from nemo_eagle._version import __version__
from nemo_eagle.config import PROCESSOR_FILES, EagleConfig, config_to_hf
from nemo_eagle.convert import hf as hf_io

log = logging.getLogger(__name__)

MODEL_CONFIG = "model_config.yaml"
MODEL_WEIGHTS = "model_weights.ckpt"
PROCESSOR_DIR = "processor"
TARGET = "nemo_eagle.nemo_model.EagleNeMoModel"
FORMAT_VERSION = 1
WEIGHT_PREFIX = "model."
# Files of an HF checkpoint directory that make up the preprocessing contract (config.json included).
CONTRACT_FILES = ("config.json", *PROCESSOR_FILES)


class NemoFileError(ValueError):
    """A ``.nemo`` file that is not an EAGLE2 model archive; the message says what is wrong."""


def model_config_dict(cfg: EagleConfig, *, attn_implementation: str = "sdpa") -> dict[str, Any]:
    """The ModelPT config stored as ``model_config.yaml`` (also what ``EagleNeMoModel`` is built from)."""
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
