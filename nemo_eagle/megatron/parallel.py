"""Process groups for the megatron path: start/stop megatron's parallel state, and run a function on N local ranks.

Under ``torchrun`` the world already exists and ``initialize`` only adds megatron's TP/PP/DP groups. Without it,
``launch`` spawns the ranks itself (NCCL on GPUs, gloo on CPU) so ``convert --tp 2`` works from a plain shell.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def require_device() -> None:
    """megatron-core places buffers with ``torch.cuda.current_device()`` even around CPU tensors (rotary tables,
    the attention workspace, the checkpoint writer's sync): say so up front instead of failing deep inside it."""
    if torch.cuda.is_available():
        return
    try:
        torch.cuda.current_device()
    except Exception:  # noqa: BLE001 - CPU-only torch raises AssertionError here
        raise RuntimeError(
            "the megatron path needs a CUDA GPU: megatron-core allocates CUDA buffers even for CPU tensors. "
            "HF <-> megatron weight mapping without megatron (nemo_eagle.megatron.bridge) works on CPU; "
            "this project's CPU tests run megatron through a test-only shim"
        ) from None


def initialize(tensor_parallel: int = 1, pipeline_parallel: int = 1, *, seed: int = 1234) -> None:
    """Create megatron's model-parallel groups (and a one-rank world if none exists) and seed the RNG tracker."""
    from megatron.core import parallel_state
    from megatron.core import tensor_parallel as mtp

    require_device()
    cuda = torch.cuda.is_available()
    if cuda:
        local = os.environ.get("LOCAL_RANK") or (dist.get_rank() if dist.is_initialized() else 0)
        torch.cuda.set_device(int(local) % torch.cuda.device_count())
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    world = dist.get_world_size()
    if world % (tensor_parallel * pipeline_parallel):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {tensor_parallel}*{pipeline_parallel}")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel,
                                             pipeline_model_parallel_size=pipeline_parallel)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        mtp.model_parallel_cuda_manual_seed(seed)
    else:
        # No CUDA RNG to fork on CPU; EAGLE2 uses no dropout, so megatron's stateless tracker is exact.
        mtp.random.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    log.info("megatron parallel state: world=%d tp=%d pp=%d dp=%d", world, tensor_parallel, pipeline_parallel,
             world // (tensor_parallel * pipeline_parallel))


def shutdown() -> None:
    """Tear down megatron's groups and the process group."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def _worker(rank: int, world: int, store_path: str, out_dir: str, fn: Callable[..., Any], args: tuple) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        result = fn(*args)
        torch.save({"ok": True, "result": result}, Path(out_dir) / f"rank{rank}.pt")
    except BaseException as e:
        torch.save({"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()},
                   Path(out_dir) / f"rank{rank}.pt")
        raise
    finally:
        shutdown()


def launch(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` spawned local ranks with a process group up; returns every rank's
    result. ``fn`` must be importable (a module-level function). Raises with the failing rank's traceback."""
    import torch.multiprocessing as mp

    if torch.cuda.is_available() and world_size > torch.cuda.device_count():
        raise RuntimeError(f"{world_size} ranks need {world_size} GPUs (NCCL cannot share one), this machine has "
                           f"{torch.cuda.device_count()}; run under torchrun across nodes, or convert with tp=pp=1 "
                           "(distributed checkpoints reshard on load, so the result is equivalent)")
    with tempfile.TemporaryDirectory(prefix="nemo_eagle_launch_") as tmp:
        log.info("spawning %d ranks (%s)", world_size, "nccl" if torch.cuda.is_available() else "gloo")
        ctx = mp.start_processes(_worker, args=(world_size, str(Path(tmp) / "store"), tmp, fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        try:
            while not ctx.join():
                pass
        except Exception as e:  # noqa: BLE001 - a rank failed: surface its own traceback
            reports = [torch.load(p, weights_only=False) for p in sorted(Path(tmp).glob("rank*.pt"))]
            errors = [r["trace"] for r in reports if not r["ok"]]
            raise RuntimeError("a spawned rank failed:\n" + ("\n".join(errors) or str(e))) from None
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False)["result"] for r in range(world_size)]
