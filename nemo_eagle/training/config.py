"""Typed configs of a training run. Hydra composes ``conf/``; these dataclasses type-check it.

``TrainRun.from_omegaconf`` is the only DictConfig -> dataclass crossing; everything below the entry point
takes these objects. ``register_schemas`` puts them in Hydra's ConfigStore so a typo fails at compose time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BAD_SAMPLE_POLICIES = ("skip", "error")
PACKING_MASKS = ("position_ids", "block")
DATA_FORMATS = ("auto", "llava", "messages", "webdataset")
PRECISION_RECIPES = ("fp32", "bf16_mixed", "bf16_true", "fp8_te")
SCHEDULERS = ("cosine", "linear", "constant")
PEFT_METHODS = ("none", "lora")


def _check(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


@dataclass
class FreezeConfig:
    """Per-module freezing: a frozen module gets no gradients (and no optimizer state)."""

    vision: bool = False
    projector: bool = False
    llm: bool = False
    convnext: bool | None = None  # Eagle2-9B's ConvNeXt branch on its own; None: follows ``vision``


@dataclass
class ModelSpec:
    """Where the weights come from.

    ``pretrained``: an HF checkpoint directory, a hub id (nvidia/Eagle2-1B) or a ``.nemo`` file. When it is
    null, a RANDOM model is built from ``config`` (EagleConfig fields) or ``preset``, with the tokenizer and
    chat template of the HF directory ``tokenizer_from``.
    """

    pretrained: str | None = None
    preset: str | None = None
    config: dict[str, Any] | None = None
    tokenizer_from: str | None = None
    attn_implementation: str = "sdpa"
    init_seed: int = 0
    kernels: str = "auto"  # backend of the model's registry ops (auto: fast kernels on a GPU, else torch)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    # Eagle2-9B: the ConvNeXt branch's dtype (NVIDIA's code keeps it in bfloat16); None: the model's dtype
    convnext_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.convnext_dtype is not None:
            _check(self.convnext_dtype, ("float32", "bfloat16"), "model.convnext_dtype")
        if self.pretrained is None and self.config is None and self.preset is None:
            raise ValueError("model: set model.pretrained (HF dir, hub id or .nemo) or, for a random model, "
                             "model.config / model.preset with model.tokenizer_from")
        _check(self.attn_implementation, ("sdpa", "eager"), "model.attn_implementation")
        _check(self.kernels, ("auto", "torch", "triton"), "model.kernels")


@dataclass
class DataConfig:
    """Training / validation data.

    Manifests are LLaVA JSON/JSONL, OpenAI ``messages`` JSON/JSONL (several: comma-separated), or WebDataset
    shards (a ``.tar`` file, a directory of them, a glob, or a brace pattern ``shards/train-{000000..000009}.tar``).
    Relative image paths resolve against ``image_root``, which defaults to each manifest's own directory.
    """

    train_manifest: str | None = None
    val_manifest: str | None = None
    image_root: str | None = None
    format: str = "auto"
    micro_batch_size: int = 1
    max_tokens_per_batch: int = 0  # 0: no token budget
    packing: bool = False
    packing_mask: str = "position_ids"
    pad_to_multiple_of: int = 1  # sequence length multiple (FP8 GEMMs need 16; precision=fp8_te raises it)
    low_res_ratio: float = 0.0  # share of samples drawn as a single low-resolution tile
    high_res_max_tiles: int | None = None  # None: the checkpoint's max_tiles
    shuffle: bool = True
    seed: int = 1234
    num_workers: int = 0
    on_bad_sample: str = "skip"

    def __post_init__(self) -> None:
        _check(self.format, DATA_FORMATS, "data.format")
        _check(self.packing_mask, PACKING_MASKS, "data.packing_mask")
        _check(self.on_bad_sample, BAD_SAMPLE_POLICIES, "data.on_bad_sample")
        if self.pad_to_multiple_of < 1:
            raise ValueError(f"data.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.micro_batch_size < 1:
            raise ValueError(f"data.micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if not 0.0 <= self.low_res_ratio <= 1.0:
            raise ValueError(f"data.low_res_ratio must be in [0, 1], got {self.low_res_ratio}")
        if self.max_tokens_per_batch < 0:
            raise ValueError(f"data.max_tokens_per_batch must be >= 0, got {self.max_tokens_per_batch}")
        if self.high_res_max_tiles is not None and self.high_res_max_tiles < 1:
            raise ValueError(f"data.high_res_max_tiles must be >= 1, got {self.high_res_max_tiles}")


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    scheduler: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        _check(self.scheduler, SCHEDULERS, "optim.scheduler")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class TrainerConfig:
    """A subset of ``lightning.pytorch.Trainer`` arguments (validation runs every ``val_check_interval`` steps)."""

    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_steps: int = 1000
    max_epochs: int = -1
    val_check_interval: int = 200
    limit_val_batches: int | None = None
    log_every_n_steps: int = 10
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"trainer.max_steps must be >= 1, got {self.max_steps}")


@dataclass
class PrecisionConfig:
    """``recipe`` names a function in ``training.precision.RECIPES``; ``exclude`` are FQN globs kept out of FP8."""

    recipe: str = "fp32"
    exclude: list[str] = field(default_factory=list)
    fp8_format: str = "hybrid"
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"

    def __post_init__(self) -> None:
        _check(self.recipe, PRECISION_RECIPES, "precision.recipe")


@dataclass
class PeftConfig:
    """LoRA on the LLM and/or vision tower; ``targets`` are FQN globs of ``nn.Linear`` modules of EagleModel."""

    method: str = "none"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(self.method, PEFT_METHODS, "peft.method")
        if self.method == "lora" and not self.targets:
            raise ValueError("peft.method=lora needs peft.targets (FQN globs of Linear layers)")


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 500
    save_top_k: int = 1
    resume: str = "auto"  # auto: resume from EXP_DIR/checkpoints/last.ckpt when it exists; none; or a .ckpt path


@dataclass
class TrainRun:
    model: ModelSpec
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    exp_dir: str = "experiments/eagle2"
    stage: str = "custom"
    seed: int = 1234
    final_nemo: str = "model.nemo"  # written inside exp_dir at the end of the run

    @classmethod
    def from_omegaconf(cls, cfg: Any) -> TrainRun:
        """The only DictConfig -> dataclass crossing (validates every field)."""
        from omegaconf import OmegaConf

        return (
            OmegaConf.to_object(cfg)
            if OmegaConf.get_type(cfg) is cls
            else _from_plain(OmegaConf.to_container(cfg, resolve=True))
        )


def _from_plain(d: dict[str, Any]) -> TrainRun:
    d = dict(d)
    model = dict(d.pop("model"))
    model["freeze"] = FreezeConfig(**model.get("freeze", {}))
    return TrainRun(
        model=ModelSpec(**model),
        data=DataConfig(**d.pop("data", {})),
        optim=OptimConfig(**d.pop("optim", {})),
        trainer=TrainerConfig(**d.pop("trainer", {})),
        precision=PrecisionConfig(**d.pop("precision", {})),
        peft=PeftConfig(**d.pop("peft", {})),
        checkpoint=CheckpointConfig(**d.pop("checkpoint", {})),
        **d,
    )


def register_schemas() -> None:
    """Register the schemas in Hydra's ConfigStore: ``train.yaml`` lists ``train_schema`` first in its defaults."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainRun)
