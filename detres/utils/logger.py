"""Logging set-up: the main process logs to stdout and ``<output_dir>/log.txt``; other processes
only print warnings and errors (prefixed with their rank) so that a multi-process run reads as one log.

The console shows INFO and above; ``log.txt`` also keeps DEBUG records (the full config, the
environment, the model's structure), which ``verbose=True`` prints on the console too."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from detres.utils.file_io import WriteError, make_dirs

__all__ = ["setup_logger"]

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: Optional[str] = None, rank: int = 0, name: str = "detres",
                 verbose: bool = False) -> logging.Logger:
    """Configure (idempotently) and return the ``name`` logger.

    Args:
        output_dir: when given, the main process also appends to ``output_dir/log.txt`` (DEBUG and up).
        rank: this process's global rank; ranks > 0 log WARNING and above to stderr only.
        verbose: the main process's console shows DEBUG records too (not only INFO and up).
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):  # re-running set-up (tests, a second run) replaces handlers
        logger.removeHandler(handler)
        handler.close()

    prefix = "" if rank == 0 else f"[rank {rank}] "
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    console.setLevel(logging.WARNING if rank else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter(prefix + _FORMAT, datefmt=_DATEFMT))
    logger.addHandler(console)

    if output_dir and rank == 0:
        make_dirs(output_dir)
        path = os.path.join(output_dir, "log.txt")
        try:
            file_handler = logging.FileHandler(path)
        except OSError as e:  # e.g. an existing folder this user may not write to
            raise WriteError.about(path, e, action="open") from e
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(_FORMAT, datefmt=_DATEFMT))
        logger.addHandler(file_handler)
    return logger
