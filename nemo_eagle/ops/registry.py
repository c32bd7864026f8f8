"""Op registry: op name -> backend -> implementation, chosen once and logged.

Policy: ``torch`` is the reference and always present. ``auto`` uses a fast backend when it imports and its
``supports()`` accepts the arguments, else the reference (and logs why). An explicit ``triton`` that cannot
load raises.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
# The module that registers each fast backend when imported.
_BACKEND_MODULES = {"triton": "triton_kernels"}


@dataclass(frozen=True)
class Impl:
    fn: Callable[..., Any]
    supports: Callable[..., bool]
    in_auto: bool = True  # False: only used when asked for by name (measured slower than the reference)


@dataclass(kw_only=True)
class KernelConfig:
    """``backend`` for every op, with per-op ``overrides`` (e.g. {"project_tokens": "torch"})."""

    backend: str = "auto"
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for op, b in [("*", self.backend), *self.overrides.items()]:
            if b not in BACKENDS:
                raise ValueError(f"unknown kernel backend {b!r} for {op}; choose one of {BACKENDS}")


_REGISTRY: dict[str, dict[str, Impl]] = defaultdict(dict)
_LOAD_ERRORS: dict[str, str] = {}


def register(op: str, backend: str, *, supports: Callable[..., bool] = lambda *a, **k: True, in_auto: bool = True):
    """Decorator registering ``fn`` as ``backend``'s implementation of ``op``.

    ``in_auto=False`` keeps a correct but slower implementation out of ``auto``; naming the backend still uses it.
    """

    def deco(fn):
        if backend in _REGISTRY[op]:
            raise ValueError(f"duplicate registration {op}/{backend}")
        _REGISTRY[op][backend] = Impl(fn, supports, in_auto)
        return fn

    return deco


def _ensure_reference() -> None:
    importlib.import_module("nemo_eagle.ops.reference")


def _load_backend(backend: str) -> str | None:
    """Import the backend's module; returns an error message or None."""
    if backend in _LOAD_ERRORS:
        return _LOAD_ERRORS[backend]
    try:
        importlib.import_module(_BACKEND_MODULES[backend])
        _LOAD_ERRORS[backend] = None  # type: ignore[assignment]
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        _LOAD_ERRORS[backend] = f"{type(e).__name__}: {e}"
    return _LOAD_ERRORS[backend]


def available_backends(op: str) -> list[str]:
    _ensure_reference()
    for b in _BACKEND_MODULES:
        _load_backend(b)
    return sorted(_REGISTRY[op])


def resolve(op: str, backend: str = "auto") -> tuple[Callable[..., Any], str]:
    """(callable, backend actually used) for ``op``."""
    _ensure_reference()
    if op not in _REGISTRY or "torch" not in _REGISTRY[op]:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_REGISTRY)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {BACKENDS}")
    ref = _REGISTRY[op]["torch"].fn
    if backend == "torch":
        return ref, "torch"
    err = _load_backend("triton")
    fast = _REGISTRY[op].get("triton")
    if fast is None:
        why = err or f"no triton implementation of {op}"
        if backend == "triton":
            raise RuntimeError(f"kernel backend 'triton' requested for {op} but it cannot load: {why}")
        log.info("kernels: %s -> torch (triton unavailable: %s)", op, why)
        return ref, "torch"
    if backend == "triton":
        return fast.fn, "triton"
    if not fast.in_auto:
        log.info("kernels: %s -> torch (the triton kernel is opt-in: slower than the reference where measured)", op)
        return ref, "torch"

    declined: set[str] = set()

    def dispatch(*args, **kwargs):
        if fast.supports(*args, **kwargs):
            return fast.fn(*args, **kwargs)
        where = ",".join(sorted({str(a.device) for a in args if hasattr(a, "device")})) or "these inputs"
        if where not in declined:  # log each kind of fallback once, not on every call
            declined.add(where)
            log.info("kernels: %s -> torch for inputs on %s (the triton kernel does not support them)", op, where)
        return ref(*args, **kwargs)

    return dispatch, "triton"


def get_op(op: str, backend: str = "auto") -> Callable[..., Any]:
    return resolve(op, backend)[0]


def use_kernels(model: Any, cfg: KernelConfig | None = None) -> dict[str, int]:
    """Rebind ``impl`` on every module of ``model`` that names an ``op``; logs and returns the table."""
    cfg = cfg or KernelConfig()
    table: Counter[str] = Counter()
    chosen: dict[str, tuple[Callable[..., Any], str]] = {}
    for module in model.modules():
        op = getattr(module, "op", None)
        if not isinstance(op, str):
            continue
        if op not in chosen:
            chosen[op] = resolve(op, cfg.overrides.get(op, cfg.backend))
        module.impl, used = chosen[op]
        table[f"{op}:{used}"] += 1
    log.info("kernels bound: %s", dict(table))
    return dict(table)
