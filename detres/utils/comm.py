"""Helpers for multi-process (``torch.distributed``) runs; all of them also work without it.

The rank, world size and local rank come from ``torch.distributed`` once a process group exists;
``LOCAL_RANK`` (set by ``torchrun`` and by :func:`detres.engine.launch.launch`) gives the process's
index on its machine.
"""
from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "all_reduce_mean",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "synchronize",
]


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def get_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if _initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """A barrier across all processes (no-op in a single process)."""
    if get_world_size() > 1:
        if dist.get_backend() == dist.Backend.NCCL:
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_gather(obj: Any) -> List[Any]:
    """Every process's picklable ``obj``, as a list indexed by rank (``[obj]`` in a single process)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over all processes (the tensor itself in a single process)."""
    world = get_world_size()
    if world == 1:
        return tensor
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    reduced = tensor.detach().to(device=device, dtype=dtype)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)  # gloo has no AVG
    return (reduced / world).to(tensor.device)
