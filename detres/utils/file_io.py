"""Writing files so that readers never see a partial one."""
from __future__ import annotations

import os
import tempfile
from typing import IO, Callable

__all__ = ["atomic_write"]


def atomic_write(path: str, write: Callable[[IO[bytes]], None], suffix: str = ".tmp") -> None:
    """Call ``write(file)`` on a temporary file next to ``path`` (``.<name>.<random><suffix>``) and move
    it onto ``path`` once it is complete and on disk. If ``write`` raises, ``path`` is untouched and the
    temporary file removed."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
