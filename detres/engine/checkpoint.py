"""Training checkpoints: atomic saves, a ``last_checkpoint`` pointer, safe loads.

A checkpoint is one ``torch.save`` file holding ``{"model": state_dict, <name>: obj.state_dict() for
each checkpointable (optimizer, scheduler, ...), **extra}`` (extra: ``iteration``, RNG states, ...),
using only tensors and plain Python types so that it loads with ``torch.load(weights_only=True)``.

Every file is written with ``detres.utils.file_io.atomic_write`` (a temporary file in the same folder,
flushed, fsync-ed and moved into place with ``os.replace``); the ``last_checkpoint`` file (the name of
the newest checkpoint) is updated the same way afterwards. A process killed during a save therefore
leaves the previous checkpoint and the pointer to it intact (at worst a stray ``.*.tmp`` file, which
the next save removes); a disk that refuses the write is a one-line ``WriteError`` naming the file.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detres.utils import comm
from detres.utils.file_io import WriteError, atomic_write, make_dirs, remove_partial_writes

__all__ = ["Checkpointer", "unwrap_model"]

logger = logging.getLogger(__name__)
POINTER_FILE = "last_checkpoint"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or ``model``)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class Checkpointer:
    """Saves and loads a model plus named objects with ``state_dict`` / ``load_state_dict``.

    Args:
        model: the model (a DDP wrapper is unwrapped).
        save_dir: folder of the checkpoints and of the ``last_checkpoint`` pointer.
        save_to_disk: whether this process writes (default: only the main process).
        checkpointables: e.g. ``optimizer=..., scheduler=...``.
    """

    def __init__(self, model: nn.Module, save_dir: str, save_to_disk: Optional[bool] = None, **checkpointables):
        self.model = unwrap_model(model)
        self.save_dir = save_dir
        self.save_to_disk = comm.is_main_process() if save_to_disk is None else save_to_disk
        self.checkpointables = checkpointables
        self.class_names: Optional[List[str]] = None  # recorded by the last checkpoint or weights loaded

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **extra: Any) -> Optional[str]:
        """Write ``<save_dir>/<name>.pth`` atomically and point ``last_checkpoint`` at it.

        Partial files of an earlier save that was killed mid-write are removed first (with a warning).
        If the disk refuses the write (full, read-only, permission denied), raises :class:`WriteError`:
        one line naming the file, the cause and the last checkpoint, which stays intact.
        """
        if not self.save_to_disk:
            return None
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(extra)
        path = os.path.join(self.save_dir, f"{name}.pth")
        try:
            make_dirs(self.save_dir)
            self._remove_partial_saves()
            atomic_write(path, lambda f: torch.save(data, f))
            atomic_write(os.path.join(self.save_dir, POINTER_FILE), lambda f: f.write(os.path.basename(path).encode()))
        except WriteError as e:
            raise WriteError(f"{e}; {self._last_checkpoint_note()}", e.errno) from e
        logger.info(f"Saved checkpoint {path}")
        return path

    def _remove_partial_saves(self) -> None:
        stale = remove_partial_writes(self.save_dir, "*.pth") + remove_partial_writes(self.save_dir, POINTER_FILE)
        if stale:
            logger.warning(f"Removed {len(stale)} partial file(s) of a checkpoint save that was interrupted "
                           f"(process killed): {', '.join(os.path.basename(p) for p in stale)}")

    def _last_checkpoint_note(self) -> str:
        try:
            last = self.get_checkpoint_file()
        except FileNotFoundError as e:
            return str(e)
        return f"the last checkpoint, {last}, is intact" if last else f"there is no earlier checkpoint in {self.save_dir}"

    # ------------------------------------------------------------------ loading
    def get_checkpoint_file(self) -> Optional[str]:
        """The checkpoint ``last_checkpoint`` names, or ``None`` when there is no pointer."""
        pointer = os.path.join(self.save_dir, POINTER_FILE)
        if not os.path.isfile(pointer):
            return None
        with open(pointer) as f:
            name = f.read().strip()
        path = os.path.join(self.save_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{pointer} names {name!r}, which does not exist in {self.save_dir}")
        return path

    def has_checkpoint(self) -> bool:
        return self.get_checkpoint_file() is not None

    def load(self, path: str) -> Dict[str, Any]:
        """Restore the model and every checkpointable from ``path``; returns the remaining entries
        (``iteration``, RNG states, ...)."""
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise RuntimeError(f"cannot read checkpoint {path} (truncated, corrupt or not a detres checkpoint): {e}") from e
        if not isinstance(data, dict) or "model" not in data:
            raise RuntimeError(f"{path} is not a detres training checkpoint (no 'model' entry)")
        self.model.load_state_dict(data.pop("model"))
        for key, obj in self.checkpointables.items():
            if key not in data:
                raise RuntimeError(f"checkpoint {path} has no {key!r} state; cannot resume from it")
            obj.load_state_dict(data.pop(key))
        self.class_names = data.get("class_names")
        logger.info(f"Loaded checkpoint {path}")
        return data

    def resume_or_load(self, weights: str, resume: bool, require_class_layers: bool = False) -> Dict[str, Any]:
        """With ``resume`` and a checkpoint in ``save_dir``: restore everything from it. Otherwise load
        model weights only from ``weights`` (path, URL or scheme, see ``detres.modeling.weight_import``)
        when it is non-empty; ``require_class_layers`` (evaluation) makes weights whose class layers
        do not fit the model a ``ConfigError``. Returns the checkpoint's extra entries (empty when not
        resuming); ``self.class_names`` becomes the class names the loaded file records (or ``None``)."""
        if resume:
            path = self.get_checkpoint_file()
            if path is not None:
                return self.load(path)
            logger.info(f"--resume: no checkpoint in {self.save_dir}, starting from scratch")
        if weights:
            from detres.modeling.weight_import import load_weights

            # load_weights logs what it loaded and what did not fit, once
            self.class_names = load_weights(self.model, weights, require_class_layers=require_class_layers).class_names
        return {}
