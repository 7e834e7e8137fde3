"""Classification datasets on disk: CIFAR-10 (python pickle batches) and ImageNet (class sub-folders).

Each loader returns records in the catalog's format (see :mod:`detres.data.catalog`):
``{"image": np.ndarray (H, W, 3) uint8 RGB, "label": int}`` (CIFAR, in memory) or
``{"file_name": str, "label": int}`` (ImageNet, decoded by :func:`read_image` when loaded).
A layout that is not as expected raises :class:`DatasetLayoutError` naming the path and the problem.

Layouts (``datasets/README.md`` explains how to prepare them)::

    cifar-10-batches-py/data_batch_{1..5}, test_batch, batches.meta
    imagenet/train/<wnid>/*.JPEG
    imagenet/val/<wnid>/*.JPEG            (val in class folders), or
    imagenet/val/*.JPEG + imagenet/val_labels.txt  (flat val with a label file)

The ImageNet label file has one line per validation image, either ``<file name> <label>`` or just
``<label>`` (then lines follow the sorted file names); a label is a class folder name (wnid) or a
0-based index into the sorted class list.
"""
from __future__ import annotations

import logging
import os
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_SHA256",
    "CIFAR10_URL",
    "DatasetLayoutError",
    "IMAGE_EXTENSIONS",
    "compute_mean_image",
    "download_cifar10",
    "imagenet_classes",
    "load_cifar10",
    "load_imagenet",
    "read_image",
]

logger = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
_CIFAR_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DatasetLayoutError(RuntimeError):
    """A dataset folder or file that does not have the expected layout or content."""


# ---------------------------------------------------------------------------- images
def read_image(file_name: str) -> np.ndarray:
    """Decode ``file_name`` to ``(H, W, 3)`` uint8 RGB; a missing or undecodable file is an error naming it."""
    if not os.path.isfile(file_name):
        raise FileNotFoundError(f"image file not found: {file_name}")
    image = cv2.imread(file_name, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetLayoutError(f"{file_name}: cannot be decoded as an image (corrupt, truncated or not an image)")
    return np.ascontiguousarray(image[:, :, ::-1])


def compute_mean_image(records: Sequence[dict], input_format: str = "BGR") -> torch.Tensor:
    """The per-pixel mean of the records' images: ``(3, H, W)`` float32 in ``input_format`` channel order,
    values in [0, 255]. All images must have the same size (CIFAR's per-pixel mean subtraction)."""
    if not records:
        raise ValueError("cannot compute a mean image of an empty dataset")
    total: Optional[np.ndarray] = None
    for record in records:
        image = record["image"] if "image" in record else read_image(record["file_name"])
        if total is None:
            total = np.zeros(image.shape, dtype=np.float64)
        elif image.shape != total.shape:
            where = record.get("file_name", "an in-memory image")
            raise ValueError(
                f"per-pixel mean needs equally sized images: {where} is {image.shape}, the first was {total.shape}; "
                "set INPUT.CLS.PER_PIXEL_MEAN False for datasets of varying image size"
            )
        total += image
    mean = torch.from_numpy(total / len(records)).float().permute(2, 0, 1)  # RGB
    return mean.flip(0).contiguous() if input_format == "BGR" else mean.contiguous()


# ---------------------------------------------------------------------------- CIFAR-10
def _load_pickle(path: Path) -> dict:
    """A CIFAR batch through the restricted unpickler (numpy arrays and plain containers only)."""
    from detres.modeling.weight_import.safe_pickle import safe_load_pickle

    try:
        data = safe_load_pickle(path)
    except Exception as e:
        raise DatasetLayoutError(f"{path}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise DatasetLayoutError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


@lru_cache(maxsize=4)
def _cifar_arrays(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetLayoutError(
            f"CIFAR-10 folder not found: {folder} (expected cifar-10-batches-py/ with data_batch_1..5 and "
            "test_batch; see datasets/README.md or run `python datasets/prepare_cifar10.py`)"
        )
    missing = [n for n in _CIFAR_SPLITS[split] if not (folder / n).is_file()]
    if missing:
        raise DatasetLayoutError(f"{folder}: missing CIFAR-10 batch file(s) {', '.join(missing)}")
    images, labels = [], []
    for name in _CIFAR_SPLITS[split]:
        batch = _load_pickle(folder / name)
        if "data" not in batch or "labels" not in batch:
            raise DatasetLayoutError(f"{folder / name}: a CIFAR batch needs 'data' and 'labels', has {sorted(batch)}")
        data, batch_labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(batch_labels):
            raise DatasetLayoutError(
                f"{folder / name}: 'data' must be uint8 (N, 3072) with N labels; got {data.dtype} {data.shape} "
                f"and {len(batch_labels)} labels"
            )
        if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= len(CIFAR10_CLASSES)):
            raise DatasetLayoutError(f"{folder / name}: labels outside 0..9")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def load_cifar10(root: str, split: str) -> List[dict]:
    """Records of the CIFAR-10 ``split`` ("train": 50k, "test": 10k) in ``root`` (cifar-10-batches-py)."""
    if split not in _CIFAR_SPLITS:
        raise ValueError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    images, labels = _cifar_arrays(str(Path(root).resolve()), split)
    return [{"image": image, "label": int(label)} for image, label in zip(images, labels)]


def download_cifar10(root: str, url: str = CIFAR10_URL, sha256: Optional[str] = CIFAR10_SHA256) -> Path:
    """Download (sha256-verified, into the detres cache, see :mod:`detres.utils.download`) and unpack the
    CIFAR-10 python archive into ``root``; returns ``root/cifar-10-batches-py``. A complete folder is kept."""
    from detres.utils.download import download

    target = Path(root) / "cifar-10-batches-py"
    if all((target / n).is_file() for names in _CIFAR_SPLITS.values() for n in names):
        logger.info("CIFAR-10 already present in %s", target)
        return target
    archive = download(url, sha256=sha256)
    Path(root).mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")
    if not target.is_dir():
        raise DatasetLayoutError(f"{archive}: the archive has no cifar-10-batches-py/ folder")
    return target


# ---------------------------------------------------------------------------- ImageNet
def _image_files(folder: Path) -> List[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _class_folders(folder: Path) -> List[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def _folder_records(folder: Path, classes: Sequence[str]) -> List[dict]:
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for name in _class_folders(folder):
        if name not in index:
            raise DatasetLayoutError(f"{folder / name}: class folder not among the {len(classes)} training classes")
        files = _image_files(folder / name)
        if not files:
            raise DatasetLayoutError(f"{folder / name}: empty class folder (no {'/'.join(IMAGE_EXTENSIONS)} images)")
        records += [{"file_name": str(folder / name / f), "label": index[name]} for f in files]
    return records


def _parse_label(token: str, index: Dict[str, int], where: str) -> int:
    if token in index:
        return index[token]
    if token.isdigit() and int(token) < len(index):
        return int(token)
    raise DatasetLayoutError(f"{where}: label {token!r} is neither a class folder name nor an index < {len(index)}")


def _label_file_records(folder: Path, label_file: Path, classes: Sequence[str]) -> List[dict]:
    files = _image_files(folder)
    if not files:
        raise DatasetLayoutError(f"{folder}: no class sub-folders and no images")
    lines = [ln.split() for ln in label_file.read_text().splitlines() if ln.strip()]
    index = {c: i for i, c in enumerate(classes)}
    if all(len(parts) == 1 for parts in lines):
        if len(lines) != len(files):
            raise DatasetLayoutError(
                f"{label_file}: {len(lines)} label lines but {len(files)} images in {folder}; "
                "one label per image (in sorted file-name order) is required"
            )
        pairs = [(f, parts[0], n + 1) for n, (f, parts) in enumerate(zip(files, lines))]
    elif all(len(parts) == 2 for parts in lines):
        present = set(files)
        pairs = [(parts[0], parts[1], n + 1) for n, parts in enumerate(lines)]
        missing = [p[0] for p in pairs if p[0] not in present]
        if missing:
            raise DatasetLayoutError(f"{label_file}: {len(missing)} listed image(s) not in {folder}, e.g. {missing[0]}")
        if len(pairs) != len(files):
            raise DatasetLayoutError(f"{label_file}: {len(pairs)} label lines but {len(files)} images in {folder}")
    else:
        raise DatasetLayoutError(f"{label_file}: every line must be '<label>' or '<file name> <label>'")
    return [{"file_name": str(folder / f), "label": _parse_label(t, index, f"{label_file}:{n}")} for f, t, n in pairs]


def imagenet_classes(root: str) -> List[str]:
    """Sorted class folder names (wnids) of ``root/train`` (or of ``root/val`` when train is absent)."""
    for split in ("train", "val"):
        folder = Path(root) / split
        if folder.is_dir():
            classes = _class_folders(folder)
            if classes:
                return classes
    raise DatasetLayoutError(f"{root}: neither train/ nor val/ has class sub-folders (see datasets/README.md)")


def load_imagenet(root: str, split: str, label_file: Optional[str] = None) -> List[dict]:
    """Records of ``root/<split>``: class sub-folders, or (val) flat images labelled by ``label_file``
    (default ``root/val_labels.txt``). Labels index the sorted class list of :func:`imagenet_classes`."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise DatasetLayoutError(f"ImageNet folder not found: {folder} (see datasets/README.md)")
    classes = imagenet_classes(root)
    if _class_folders(folder):
        records = _folder_records(folder, classes)
    else:
        labels = Path(label_file) if label_file else Path(root) / f"{split}_labels.txt"
        if not labels.is_file():
            raise DatasetLayoutError(f"{folder}: no class sub-folders, and the label file {labels} does not exist")
        records = _label_file_records(folder, labels, classes)
    logger.info("ImageNet %s: %d images in %d classes from %s", split, len(records), len(classes), folder)
    return records
