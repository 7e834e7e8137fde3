"""Starting single- and multi-process runs.

* Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment) the process group is
  created from ``env://`` and ``main_func`` runs in the current process.
* Otherwise ``num_processes`` processes per machine are spawned (``num_machines`` machines, this one
  being ``machine_rank``) and rendezvous at ``dist_url`` ("auto": a free port on 127.0.0.1, one
  machine only).

The backend is NCCL when the processes train on GPUs (one GPU per process, ``LOCAL_RANK``) and gloo
otherwise: on a machine without GPUs ``--num-gpus N`` runs N CPU processes.
"""
from __future__ import annotations

import datetime
import logging
import os
import socket
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detres.utils import comm

__all__ = ["default_backend", "find_free_port", "launch", "launched_by_torchrun"]

logger = logging.getLogger(__name__)
TIMEOUT = datetime.timedelta(minutes=30)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def default_backend(use_gpu: bool) -> str:
    return "nccl" if use_gpu and torch.cuda.is_available() else "gloo"


def _init_process_group(backend: str, init_method: str, world_size: int, rank: int) -> None:
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:  # CPU processes share the machine's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group(backend, init_method=init_method, world_size=world_size, rank=rank, timeout=TIMEOUT)
    comm.synchronize()


def launch(
    main_func: Callable[..., Any],
    num_processes: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    backend: Optional[str] = None,
) -> Any:
    """Run ``main_func(*args)`` in every process of the job (see the module docstring).

    Args:
        num_processes: processes on this machine (GPUs, or CPU processes for gloo).
        backend: "nccl" or "gloo"; default: NCCL when CUDA is available, else gloo.
    Returns ``main_func``'s result in single-process and torchrun runs, ``None`` after spawning.
    """
    backend = backend or default_backend(True)
    if launched_by_torchrun():
        _init_process_group(backend, "env://", int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]))
        try:
            return main_func(*args)
        finally:
            dist.destroy_process_group()
    world_size = num_processes * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; give tcp://HOST:PORT of machine 0")
        dist_url = f"tcp://127.0.0.1:{find_free_port()}"
    if backend == "nccl" and num_processes > torch.cuda.device_count():
        raise ValueError(f"{num_processes} processes requested but only {torch.cuda.device_count()} GPUs are visible")
    mp.start_processes(
        _worker,
        nprocs=num_processes,
        args=(main_func, args, world_size, num_processes, machine_rank, dist_url, backend),
        daemon=False,
        start_method="spawn",
    )
    return None


def _worker(local_rank: int, main_func, args, world_size: int, num_processes: int, machine_rank: int,
            dist_url: str, backend: str) -> None:
    rank = machine_rank * num_processes + local_rank
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(num_processes))
    _init_process_group(backend, dist_url, world_size, rank)
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
