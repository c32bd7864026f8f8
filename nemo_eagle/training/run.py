"""``nemo-eagle train``: compose ``conf/train.yaml`` with Hydra overrides, train, leave ``EXP_DIR/model.nemo``.

    nemo-eagle train model.pretrained=nvidia/Eagle2-1B data.train_manifest=data.jsonl exp_dir=runs/sft
    nemo-eagle train recipe=stage1_projector trainer=8gpu precision=fp8_te ...
    nemo-eagle train --cfg job ...            # print the composed config and exit

A run resumes from ``EXP_DIR/checkpoints/last.ckpt`` when it exists (``checkpoint.resume=auto``), with the
data position, optimizer, scheduler and RNG states of that step, so the loss curve continues exactly.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_eagle.training.config import TrainRun, register_schemas

log = logging.getLogger("nemo_eagle.train")

CONF_DIR = Path(os.environ.get("NEMO_EAGLE_CONF", Path(__file__).resolve().parents[2] / "conf"))


def compose(overrides: Sequence[str] = (), config_name: str = "train"):
    """The composed, schema-checked DictConfig of ``conf/<config_name>.yaml`` with ``overrides``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not (CONF_DIR / f"{config_name}.yaml").exists():
        raise FileNotFoundError(f"no {config_name}.yaml in the config directory {CONF_DIR} (set NEMO_EAGLE_CONF)")
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def load_run(overrides: Sequence[str] = (), config_name: str = "train") -> TrainRun:
    return TrainRun.from_omegaconf(compose(overrides, config_name))


def resume_checkpoint(run: TrainRun) -> str | None:
    """The checkpoint to resume from: ``last.ckpt``, or when it is torn the newest intact ``step*.ckpt`` (said so)."""
    from nemo_eagle.training.callbacks import checkpoint_step

    r = run.checkpoint.resume
    if r == "none":
        return None
    if r != "auto":
        if not Path(r).exists():
            raise FileNotFoundError(f"checkpoint.resume={r!r}: no such checkpoint")
        if checkpoint_step(r) is None:
            raise ValueError(f"checkpoint.resume={r!r} is torn or not a training checkpoint")
        return r
    folder = Path(run.exp_dir) / "checkpoints"
    last = folder / "last.ckpt"
    candidates = [last] if last.exists() else []
    candidates += sorted(folder.glob("step*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        if checkpoint_step(c) is not None:
            if c != last and last.exists():
                log.warning("%s is torn or unreadable; resuming from the newest intact checkpoint %s", last, c)
            return str(c)
        log.warning("skipping torn checkpoint %s", c)
    return None


@dataclass
class TrainResult:
    nemo_path: Path | None
    trainer: Any
    model: Any
    interrupted: int | None = None  # the signal that stopped the run (a checkpoint was saved; no .nemo written)


def train(run: TrainRun, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Build, fit (resuming when a checkpoint exists) and save ``EXP_DIR/<final_nemo>``."""
    from lightning.pytorch import seed_everything
    from omegaconf import OmegaConf

    import nemo_eagle.nemo_model  # noqa: F401  (imports lightning, nemo.core and their handlers before the clean-up)
    from nemo_eagle.training.build import build_run
    from nemo_eagle.training.logs import drop_duplicate_handlers

    drop_duplicate_handlers()
    exp = Path(run.exp_dir)
    exp.mkdir(parents=True, exist_ok=True)
    (exp / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    seed_everything(run.seed, workers=True, verbose=False)
    built = build_run(run, callbacks=callbacks)
    ckpt = resume_checkpoint(run)
    step_log = exp / "train_log.jsonl"
    if ckpt:
        from nemo_eagle.training.callbacks import checkpoint_step, keep_steps_up_to

        step = checkpoint_step(ckpt)
        log.info("resuming from %s (step %d of %d)", ckpt, step, run.trainer.max_steps)
        dropped = keep_steps_up_to(step_log, step) if built.trainer.global_rank == 0 else 0
        if dropped:
            log.info("train_log.jsonl: dropped %d records of steps after %d (they are redone now)", dropped, step)
    else:
        log.info("starting fresh (no checkpoint in %s)", exp / "checkpoints")
        if step_log.exists() and built.trainer.global_rank == 0:
            step_log.replace(step_log.with_name("train_log.previous.jsonl"))
            log.info("the previous run's train_log.jsonl is kept as train_log.previous.jsonl")
    built.trainer.fit(built.model, ckpt_path=ckpt)
    from nemo_eagle.training.callbacks import SaveOnSignal

    stopper = next((c for c in built.trainer.callbacks if isinstance(c, SaveOnSignal)), None)
    if stopper is not None and stopper.received is not None:
        return TrainResult(nemo_path=None, trainer=built.trainer, model=built.model, interrupted=stopper.received)
    out = None
    if built.trainer.global_rank == 0:
        out = exp / run.final_nemo
        built.model.save_to(str(out))
        log.info("saved %s", out)
    return TrainResult(nemo_path=out, trainer=built.trainer, model=built.model)


def config_groups() -> dict[str, list[str]]:
    """Each config group (a folder of ``conf/``) and its options (the YAML files in it), sorted."""
    if not CONF_DIR.is_dir():
        return {}
    return {d.name: sorted(f.stem for f in d.glob("*.yaml")) for d in sorted(CONF_DIR.iterdir()) if d.is_dir()}


def _group_defaults(config_name: str = "train") -> dict[str, str]:
    """``group -> option`` from the defaults list of ``conf/<config_name>.yaml`` (for --help only)."""
    import re

    path = CONF_DIR / f"{config_name}.yaml"
    text = path.read_text() if path.exists() else ""
    return dict(re.findall(r"^\s*-\s*([\w/]+)\s*:\s*([\w.-]+)\s*$", text, flags=re.MULTILINE))


def _epilog() -> str:
    defaults = _group_defaults()
    lines = ["config groups (conf/<group>/<option>.yaml; choose one with group=option, * = default):"]
    for group, options in config_groups().items():
        shown = [f"{o}*" if defaults.get(group) == o else o for o in options]
        lines.append(f"  {group:<10} {', '.join(shown)}")
    lines += [
        "",
        "other overrides: Hydra syntax, e.g. data.micro_batch_size=4 optim.lr=1e-4 exp_dir=runs/x",
        "on a CPU machine: trainer=cpu_debug precision=fp32 (full precision; add model=tiny for a smoke run)",
        "print the composed config without training: nemo-eagle train --cfg job ...",
    ]
    return "\n".join(lines)


def check_group_choices(overrides: Sequence[str]) -> None:
    """``group=option`` overrides name an existing option, else a ValueError listing the choices."""
    groups = config_groups()
    for o in overrides:
        key, eq, value = o.lstrip("+~").partition("=")
        if not eq or key not in groups or not value or value in ("null", "None"):
            continue
        if value not in groups[key]:
            raise ValueError(f"{key}={value}: no such option in config group {key!r}; "
                             f"choose one of {', '.join(groups[key])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nemo-eagle train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p.add_argument("overrides", nargs="*", help="Hydra overrides (group=option, key=value)")
    p.add_argument("--config-name", default="train", help="a YAML in conf/ (default: train)")
    p.add_argument("--cfg", choices=["job"], help="print the composed config and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from nemo_eagle.training.logs import quiet_third_party_logs

    quiet_third_party_logs()
    try:
        check_group_choices(args.overrides)
        cfg = compose(args.overrides, args.config_name)
        if args.cfg:
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg))
            return 0
        run = TrainRun.from_omegaconf(cfg)
        result = train(run)
    except Exception as e:  # every user error becomes one clear line, not a stack trace
        if not _is_user_error(e):
            raise
        print(f"nemo-eagle train: error: {_describe(e)}", file=sys.stderr)
        return 2
    if result.interrupted is not None:
        print("nemo-eagle train: interrupted; checkpoint saved, rerun the same command to resume", file=sys.stderr)
        return 128 + int(result.interrupted)
    if result.nemo_path is not None:
        print(f"trained model: {result.nemo_path}")
    return 0


def _is_user_error(e: Exception) -> bool:
    from hydra.errors import HydraException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    from nemo_eagle.data.datasets import BadSampleError
    from nemo_eagle.training.precision import PrecisionUnavailable

    return isinstance(e, (HydraException, OmegaConfBaseException, BadSampleError, PrecisionUnavailable,
                          MisconfigurationException, FileNotFoundError, ValueError, KeyError))


def _describe(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({str(cause).splitlines()[0]})"
    return text
