"""Image sizes read from file headers (no pixel decoding), cached in memory and on disk.

The CSV (Kaggle) layout of ILSVRC CLS-LOC has no image sizes; the loader needs them to check boxes
against their image. PIL's ``Image.open`` parses only the header; the size reported is the size that
``cv2.imread`` decodes to, i.e. with the EXIF orientation applied (orientations 5-8 swap height and
width). Sizes are cached in memory, and for folders of at least ``DISK_CACHE_MIN_IMAGES`` images (the
full ILSVRC sets, not small or generated ones) also in ``<detres cache>/image_sizes/<hash of the
folder>.json`` (``$DETRES_CACHE``, see :mod:`detres.utils.download`); each entry is checked against the
file's modification time and byte size, so a changed image is read again.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from detres.data.detection.mapper import ImageReadError
from detres.utils.download import cache_dir

__all__ = ["DISK_CACHE_MIN_IMAGES", "read_image_size", "read_image_sizes"]

DISK_CACHE_MIN_IMAGES = 10000  # reading fewer headers takes well under a second
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: cv2 swaps height and width
# path -> (mtime_ns, byte size, height, width); shared by every folder of this process
_MEMORY: Dict[str, Tuple[int, int, int, int]] = {}


def read_image_size(path: str) -> Tuple[int, int]:
    """``(height, width)`` of the image file ``path`` as decoded by ``cv2.imread`` (EXIF orientation
    applied), from its header only; a missing or unreadable file is an ``ImageReadError`` naming it."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            transposed = image.getexif().get(_EXIF_ORIENTATION, 1) in _TRANSPOSED_ORIENTATIONS
    except FileNotFoundError:
        raise ImageReadError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageReadError(f"{path}: cannot read the image size from its header ({e})") from None
    return (width, height) if transposed else (height, width)


def _cache_file(folder: str) -> Path:
    digest = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:16]
    return cache_dir() / "image_sizes" / f"{digest}.json"


def _load_cache(cache_file: Path) -> Dict[str, List[int]]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):  # no cache yet, or a damaged one: sizes are read again
        return {}
    return data if isinstance(data, dict) else {}


def _save_cache(cache_file: Path, entries: Dict[str, List[int]]) -> None:
    """Write atomically (concurrent processes may write the same cache); an unwritable cache is skipped."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=cache_file.name, dir=cache_file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass


def read_image_sizes(paths: Sequence[str], folder: str) -> List[Tuple[int, int]]:
    """``(height, width)`` of each of ``paths`` (files under ``folder``, which names the disk cache);
    see the module docstring for the caching."""
    use_disk = len(paths) >= DISK_CACHE_MIN_IMAGES
    cache_file = _cache_file(folder)
    on_disk = _load_cache(cache_file) if use_disk else {}
    sizes: List[Tuple[int, int]] = []
    changed = False
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise ImageReadError(f"image file not found: {path}") from None
        key, relative = (stat.st_mtime_ns, stat.st_size), os.path.relpath(path, folder)
        known = _MEMORY.get(path) or tuple(on_disk.get(relative, ()))
        if len(known) == 4 and tuple(known[:2]) == key:
            height, width = int(known[2]), int(known[3])
        else:
            height, width = read_image_size(path)
            changed = True
        _MEMORY[path] = (*key, height, width)
        on_disk[relative] = [*key, height, width]
        sizes.append((height, width))
    if changed and use_disk:
        _save_cache(cache_file, on_disk)
    return sizes
