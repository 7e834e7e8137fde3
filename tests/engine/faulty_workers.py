"""Entry points for ``launch`` fault tests (spawned processes import them from here): one rank fails
while the others wait in a gloo collective that can only complete if every rank joins."""
from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from detres.utils import comm


def fail_on_rank(failing_rank: int, how: str) -> None:
    """Rank ``failing_rank`` fails (``how``: "raise", "exit" (``os._exit(3)``) or "kill" (SIGKILL));
    the other ranks block in ``all_reduce``."""
    if comm.get_rank() == failing_rank:
        if how == "raise":
            raise ValueError(f"rank {failing_rank} failed on purpose")
        if how == "exit":
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
    dist.all_reduce(torch.ones(1))
    dist.barrier()

