"""Writing files so that readers never see a partial one, and so that a failed write (disk full,
permission denied, read-only file system) is one clear :class:`WriteError` naming the file; the same
for whole folders (:func:`build_folder_atomically`)."""
from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import tempfile
from typing import IO, Callable, Iterator, List, Optional, Union

__all__ = ["WriteError", "atomic_write", "build_folder_atomically", "make_dirs", "remove_partial_writes"]


class WriteError(OSError):
    """A file or folder could not be written. ``str(error)`` is one line naming it and the cause
    ("No space left on device", "Permission denied", ...); ``errno`` is the cause's."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def about(cls, path: str, cause: OSError, action: str = "write") -> "WriteError":
        return cls(f"cannot {action} {path}: {cause.strerror or cause}", cause.errno)


class _TempFile(io.FileIO):
    """The temporary file of :func:`atomic_write`. It remembers the first ``OSError`` of its own writes
    (``torch.save`` re-raises one as a ``RuntimeError``), so that errors of the disk can be told apart
    from other errors of the writer (e.g. a download's network errors, which are ``OSError`` too)."""

    error: Optional[OSError] = None

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            self.error = self.error or e
            raise

    def write(self, data) -> Optional[int]:
        with self.recording():
            return super().write(data)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``; raises :class:`WriteError` naming ``path`` on failure
    (e.g. a parent is a regular file, a read-only file system)."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise WriteError.about(path, e, action="create the folder") from e


def atomic_write(path: str, write: Callable[[IO[bytes]], None], suffix: str = ".tmp") -> None:
    """Call ``write(file)`` on a temporary file next to ``path`` (``.<name>.<random><suffix>``) and move
    it onto ``path`` once it is complete and on disk. If anything fails or the process is interrupted,
    ``path`` is untouched and the temporary file removed (a ``kill -9`` leaves it behind: see
    :func:`remove_partial_writes`). A failure of the disk itself (creating, writing, syncing or
    renaming the file) raises :class:`WriteError` naming ``path``; other errors of ``write`` propagate."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    except OSError as e:
        raise WriteError.about(path, e) from e
    raw = _TempFile(fd, "wb")
    try:
        with io.BufferedWriter(raw) as f:
            write(f)
            f.flush()
            with raw.recording():
                os.fsync(raw.fileno())
        with raw.recording():
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if raw.error is None:
            raise
        raise WriteError.about(path, raw.error) from raw.error
    dir_fd = os.open(folder, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def build_folder_atomically(target: Union[str, os.PathLike], build: Callable[[str], object], marker: str) -> None:
    """Call ``build(folder)`` on a new temporary folder next to ``target`` (``<name>.tmp-<random>``,
    parents created) and rename it to ``target``, so that readers never see a half-built folder.
    ``marker`` (a path inside the folder, e.g. ``"spec.json"``, written last by ``build``) tells a
    complete folder from an incomplete one: when the rename fails because ``target`` is in the way,
    a complete ``target`` (another process finished first) is kept and this build discarded, an
    incomplete one (a stale leftover) is replaced. The temporary folder is always removed: when
    ``build`` raises, ``target`` is untouched and the error propagates. Callers check ``marker``
    first to skip the build of a folder that is already there."""
    target = os.fspath(target)
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=parent)
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first, or an incomplete folder is in the way
            if not os.path.isfile(os.path.join(target, marker)):
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_partial_writes(folder: str, name_glob: str = "*", suffix: str = ".tmp") -> List[str]:
    """Delete the temporary files that :func:`atomic_write` calls for targets matching ``name_glob``
    left in ``folder`` when their process was killed mid-write; returns their paths. Only call it
    when no other process is writing such a file in ``folder``."""
    stale = sorted(glob.glob(os.path.join(glob.escape(folder), f".{name_glob}.*{suffix}")))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return stale
