"""Starting single- and multi-process runs.

* Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` in the environment) the process group is
  created from ``env://`` and ``main_func`` runs in the current process.
* Otherwise ``num_processes`` processes per machine are spawned (``num_machines`` machines, this one
  being ``machine_rank``) and rendezvous at ``dist_url`` ("auto": a free port on 127.0.0.1, one
  machine only).

The backend is NCCL when the processes train on GPUs (one GPU per process, ``LOCAL_RANK``) and gloo
otherwise: on a machine without GPUs ``--num-gpus N`` runs N CPU processes.

When a spawned process fails (raises, exits non-zero, or is killed by a signal) the others are
stopped, even those blocked in a collective that can no longer complete (SIGTERM, then SIGKILL after
a 30 s grace period), and ``launch`` raises ``WorkerFailedError`` naming the failed rank and its
error (its traceback, or its exit code or signal).
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import socket
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from detres.utils import comm

__all__ = ["WorkerFailedError", "default_backend", "find_free_port", "launch", "launched_by_torchrun"]

logger = logging.getLogger(__name__)
TIMEOUT = datetime.timedelta(minutes=30)


class WorkerFailedError(RuntimeError):
    """A spawned process of a multi-process run failed; the others were stopped.

    Attributes: ``rank`` (global rank of the failed process), ``exit_code`` (negative: killed by
    signal ``-exit_code``).
    """

    def __init__(self, message: str, rank: int, exit_code: int) -> None:
        super().__init__(message)
        self.rank, self.exit_code = rank, exit_code


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
    raised = mp.get_context("spawn").SimpleQueue()  # (local rank, exit code) of each main_func that raised
    context = mp.start_processes(
        _worker,
        nprocs=num_processes,
        args=(main_func, args, world_size, num_processes, machine_rank, dist_url, backend, raised),
        daemon=False,
        start_method="spawn",
        join=False,
    )
    try:
        while not context.join():
            pass
    except ProcessException as e:  # the others are stopped by now
        order = []
        while not raised.empty():
            order.append(raised.get())
        index, exit_code = _first_failure(context, e.error_index, dict(order), [i for i, _ in order])
        rank = machine_rank * num_processes + index
        raise WorkerFailedError(_describe_failure(context, index, rank, world_size, exit_code), rank,
                                exit_code) from None
    finally:
        raised.close()
    return None


def _first_failure(context: mp.ProcessContext, reported: int, codes: dict, order: list) -> Tuple[int, int]:
    """``(local rank, exit code)`` of the process whose failure stopped the run.

    When one process fails, the others fail too in their next collective (e.g. gloo's "Connection
    reset by peer"), and ``ProcessContext.join`` reports whichever it sees exit first. A process that
    exited without raising (``os._exit``, a signal other than the SIGTERM that stopped it) is the cause;
    otherwise the first one whose ``main_func`` raised (``codes``/``order``: as reported by ``_worker``).
    """
    silent = [i for i, p in enumerate(context.processes) if p.exitcode not in (0, -signal.SIGTERM) and i not in codes]
    if silent:
        index = reported if reported in silent else silent[0]
        return index, context.processes[index].exitcode
    index = order[0] if order else reported
    return index, codes.get(index, context.processes[index].exitcode)


def _describe_failure(context: mp.ProcessContext, index: int, rank: int, world_size: int, exit_code: int) -> str:
    head = f"process of rank {rank} (of {world_size}, pid {context.processes[index].pid})"
    stopped = "the other processes were stopped"
    if os.path.isfile(context.error_files[index]):  # written by torch when main_func raised an Exception
        with open(context.error_files[index], "rb") as f:
            return f"{head} failed; {stopped}. Its error:\n{pickle.load(f).strip()}"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:  # a signal number Python does not name
            name = str(-exit_code)
        return f"{head} was killed by signal {name}; {stopped}"
    return f"{head} exited with code {exit_code}; {stopped}"


def _worker(local_rank: int, main_func, args, world_size: int, num_processes: int, machine_rank: int,
            dist_url: str, backend: str, raised) -> None:
    rank = machine_rank * num_processes + local_rank
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(num_processes))
    _init_process_group(backend, dist_url, world_size, rank)
    try:
        main_func(*args)
        comm.synchronize()  # no process tears the group down while a peer may still be using it
    except SystemExit as e:
        if e.code not in (0, None):  # e.g. a tool that printed its error; before the peers can notice
            raised.put((local_rank, e.code if isinstance(e.code, int) else 1))
        raise
    except BaseException:
        raised.put((local_rank, 1))  # the exit code of an uncaught exception
        raise
    finally:
        dist.destroy_process_group()
