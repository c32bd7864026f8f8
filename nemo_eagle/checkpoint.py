"""The one checkpoint layer: a hub id, an HF directory, a ``.nemo`` file or a megatron directory, resolved into
(config, weights, preprocessing-contract files).

Every entry point (``EagleModel``, ``EagleProcessor``, the serving engine, ``EagleEmbedder``, eval, convert, the
CLI) opens checkpoints through ``open_checkpoint``, so the options a loader takes (dtype, device, attention,
kernels) mean the same for every format, and an unreadable checkpoint gives the same one-line error everywhere.

This module reads files only: it never imports the model, the processor or the training code (they import it).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nemo_eagle.config import EagleConfig, config_from_hf
from nemo_eagle.convert import hf as hf_io

log = logging.getLogger(__name__)

FORMATS = ("hf", "nemo", "megatron")
EMBEDDER_CONFIG = "embedder_config.json"
MEGATRON_META = "megatron.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and what is wrong with it."""


@dataclass
class Checkpoint:
    """An opened checkpoint. ``contract_dir`` holds its tokenizer, chat template, config.json and processor files."""

    source: str
    path: Path
    format: str
    config: EagleConfig
    contract_dir: Path
    _nemo_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    # --------------------------------------------------------------------------------------- contract
    def file(self, name: str) -> Path | None:
        """A contract file (``tokenizer.json``, ``embedder_config.json``, ...) or None when the checkpoint has none."""
        p = self.contract_dir / name
        return p if p.is_file() else None

    def embedder_config(self) -> dict[str, Any]:
        p = self.file(EMBEDDER_CONFIG)
        return _read_json(p) if p is not None else {}

    def tokenizer(self):
        """The checkpoint's ``EagleTokenizer``, or None when it carries no ``tokenizer.json``."""
        from nemo_eagle.data.tokenizer import EagleTokenizer

        p = self.file("tokenizer.json")
        return EagleTokenizer.from_file(p) if p is not None else None

    # ---------------------------------------------------------------------------------------- weights
    def float_dtypes(self) -> set[torch.dtype]:
        """The floating-point dtypes the weights are stored in (headers only where the format allows)."""
        if self.format == "hf":
            return _safetensors_dtypes(self.path)
        if self.format == "megatron":  # saved in one dtype, recorded next to the shards
            return {getattr(torch, str(_read_json(self.path / MEGATRON_META).get("dtype", "float32")))}
        return {t.dtype for t in self.state_dict().values() if t.is_floating_point()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``.nemo`` weights under EagleModel names (read once, memory-mapped)."""
        if self.format != "nemo":
            raise CheckpointError(f"{self.source}: state_dict() is for .nemo files; use load_weights(model)")
        if self._nemo_state is None:
            from nemo_eagle.convert import nemo_archive

            self._nemo_state = nemo_archive.read_nemo(self.path).state_dict
        return self._nemo_state

    def load_weights(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model`` (built from ``self.config``); every missing, unexpected or mis-shaped
        tensor is named."""
        if self.format == "nemo":
            from nemo_eagle.convert.nemo_archive import load_state_dict_checked

            load_state_dict_checked(model, self.state_dict(), str(self.source))
        else:
            hf_dir = self.path if self.format == "hf" else self._megatron_as_hf()
            hf_io.load_hf_state_dict(model, hf_io.read_safetensors(hf_dir), tied=self.config.llm.tie_word_embeddings)
        if self.config.llm.tie_word_embeddings:
            model.language_model.tie_weights()

    def _megatron_as_hf(self) -> Path:
        """Gather a megatron dist-checkpoint into HF tensors, in a child process: megatron's reader sets up
        torch.distributed and model-parallel state, which must not leak into the loading process."""
        out = Path(tempfile.mkdtemp(prefix="nemo_eagle_megatron_hf_"))
        _TEMP_DIRS.append(out)
        log.info("reading megatron checkpoint %s (gathered to one rank in a child process)", self.path)
        cmd = [sys.executable, "-m", "nemo_eagle.megatron.convert", "--from", str(self.path), "--to", str(out),
               "--format", "hf"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise CheckpointError(f"cannot read megatron checkpoint {self.path}: {last}")
        return out


_TEMP_DIRS: list[Path] = []


@atexit.register
def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p} is not valid JSON ({e}); the checkpoint is damaged: re-download or re-export it") \
            from None


def _safetensors_dtypes(path: Path) -> set[torch.dtype]:
    from safetensors import safe_open

    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    found: set[torch.dtype] = set()
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 (not a dict)
                d = st.get_slice(k).get_dtype()
                if d in names:
                    found.add(names[d])
    return found


def detect_format(path: Path) -> str:
    """"nemo", "megatron" or "hf" for an existing local path (by content, not only by name)."""
    if path.is_file():
        if path.suffix == ".nemo" or tarfile.is_tarfile(path):
            return "nemo"
        raise CheckpointError(f"{path} is a file but not a .nemo archive; pass a .nemo file, an HF checkpoint "
                              "directory, a megatron checkpoint directory or a hub id")
    if (path / MEGATRON_META).is_file() and (path / "weights").is_dir():
        return "megatron"
    if (path / "config.json").is_file():
        return "hf"
    raise CheckpointError(f"{path} is a directory but holds no checkpoint (no config.json, no {MEGATRON_META})")


def open_checkpoint(source: str | os.PathLike) -> Checkpoint:
    """Resolve ``source`` (hub id, ``hf://`` id, HF directory, ``.nemo`` file, megatron directory) and read its config.

    Weights are not read until ``load_weights``. Errors are ``CheckpointError`` / ``FileNotFoundError`` with one
    line naming the file and the fix."""
    from nemo_eagle.hub import resolve_checkpoint

    s = str(source)
    local = Path(s).expanduser()
    if not local.exists():
        if s.endswith(".nemo"):
            raise FileNotFoundError(f".nemo file not found: {local}")
        local = resolve_checkpoint(s.removeprefix("hf://"))
    fmt = detect_format(local)
    if fmt == "nemo":
        from nemo_eagle.convert import nemo_archive

        try:
            contents = nemo_archive.read_nemo(local, weights=False)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CheckpointError(f"{local} is a damaged .nemo archive ({e}); re-export it") from None
        contract = nemo_archive.materialize_processor_dir(contents.processor_files, contents.eagle)
        ckpt = Checkpoint(s, local, fmt, contents.eagle, contract)
    else:
        cfg = config_from_hf(_read_json(local / "config.json"))
        has_weights = (local / hf_io.WEIGHTS_NAME).exists() or (local / hf_io.INDEX_NAME).exists()
        if fmt == "hf" and has_weights:  # a contract-only directory (processor files) has no tensors to look at
            tied = not hf_io.hf_has_lm_head(_tensor_names(local))
            if tied != cfg.llm.tie_word_embeddings:  # the flag sits in text_config in some configs: trust the tensors
                cfg = cfg.replace(llm={"tie_word_embeddings": tied})
            # Eagle2-9B: the tower order and the ConvNeXt head size, read from the tensor names and shapes
            cfg = hf_io.config_for_tensors(cfg, hf_io.tensor_shapes(local))
        if fmt == "megatron" and cfg.vision.is_mixture:  # what the tensors told when it was saved (Eagle2-9B)
            saved = _read_json(local / MEGATRON_META).get("convnext") or {}
            cfg = cfg.replace(vision={"convnext": {**cfg.vision.convnext, **saved}})
        ckpt = Checkpoint(s, local, fmt, cfg, local)
    log.debug("opened %s as %s", s, fmt)
    return ckpt


def _tensor_names(path: Path) -> list[str]:
    from safetensors import safe_open

    index = path / hf_io.INDEX_NAME
    if index.exists():
        return list(_read_json(index)["weight_map"])
    single = path / hf_io.WEIGHTS_NAME
    if not single.exists():
        raise FileNotFoundError(f"no {hf_io.WEIGHTS_NAME} or {hf_io.INDEX_NAME} in {path}")
    try:
        with safe_open(str(single), "pt") as st:
            return list(st.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for torn headers
        raise CheckpointError(f"{single} cannot be read ({e}); the checkpoint is damaged") from None


def resolve_dtype(dtype: torch.dtype | str | None, stored: set[torch.dtype]) -> torch.dtype:
    """The model dtype: as asked, or "auto"/None = the stored dtype (float32 when the checkpoint mixes dtypes)."""
    if dtype is None or dtype == "auto":
        if len(stored) == 1:
            return next(iter(stored))
        return torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(names)} or 'auto'")
        return names[dtype]
    return dtype
