"""Reproducibility: seeding, capturing/restoring every RNG, and a description of the environment.

RNG states are stored as tensors and plain Python types so that checkpoints holding them load with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch

__all__ = [
    "capture_rng_state",
    "collect_env_info",
    "draw_seed",
    "git_hash",
    "preserved_rng_state",
    "resolve_seed",
    "restore_rng_state",
    "seed_all_rng",
]


def draw_seed() -> int:
    """A fresh seed from the OS entropy pool, in [0, 2**31)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def resolve_seed(seed: int) -> int:
    """``seed`` when it is >= 0; otherwise a seed drawn by the main process and shared with every
    process (all of them must draw the same data stream)."""
    if seed >= 0:
        return int(seed)
    from detres.utils import comm

    return comm.all_gather(draw_seed())[0]


def seed_all_rng(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> Dict[str, Any]:
    """The state of the python, numpy, torch and CUDA RNGs of this process, as tensors / plain types."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without changing any RNG the training loop draws from."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def git_hash(path: Optional[Path] = None) -> Optional[str]:
    """The commit of the git checkout holding ``path`` (the detres package by default), with a
    ``-dirty`` suffix when tracked files changed; ``None`` outside a checkout or without commits."""
    path = Path(path) if path is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("-dirty" if dirty else "")


def collect_env_info() -> str:
    """A human-readable description of the software and hardware this process runs on."""
    import detres

    rows = [
        ("sys.platform", sys.platform),
        ("platform", platform.platform()),
        ("Python", sys.version.replace("\n", " ")),
        ("detres", f"{detres.__version__} @ {Path(detres.__file__).parent}"),
        ("detres git", git_hash() or "unknown"),
        ("numpy", np.__version__),
        ("torch", f"{torch.__version__} @ {Path(torch.__file__).parent}"),
        ("torch debug build", str(torch.version.debug)),
        ("CPU threads", str(torch.get_num_threads())),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        rows.append(("CUDA (torch built with)", str(torch.version.cuda)))
        rows.append(("cuDNN", str(torch.backends.cudnn.version())))
        for i in range(torch.cuda.device_count()):
            rows.append((f"GPU {i}", torch.cuda.get_device_name(i)))
    for name in ("torchvision", "fvcore", "pycocotools", "Pillow", "opencv-python-headless", "opencv-python"):
        try:  # the installed distributions' metadata: no (slow) imports
            rows.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
