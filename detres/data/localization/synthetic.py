"""A generated localization set in the ILSVRC CLS-LOC CSV layout: the localization quickstart's data.

``num_classes`` classes (at most 24) of distinct shapes (disc, square, triangle, ring, cross, star,
diamond, crescent), each solid, striped or dotted, each in its own hue. An image holds ONE dominant
object of its class (its extent 20%-90% of the image's shorter side, aspect ratio within 0.6-1.6,
anywhere in the image), drawn over 2-4 small clutter shapes of other classes (8%-16% of the shorter
side; they are not annotated), on a low-saturation background with smooth blotches and pixel noise.
Image sides are drawn independently in ``image_size``, so images are rarely square. The box is the
tight box of the object's pixels, in ILSVRC's pixel-inclusive numbers (``x1`` = first column,
``x2`` = last column). Image ``i`` of a split depends only on ``(seed, split, i)``; its class is
``i % num_classes``.

Written to disk exactly as the Kaggle CLS-LOC layout (see :mod:`.ilsvrc`) and read back by the same
loader: ``LOC_synset_mapping.txt`` (wnids ``n00000000``, ``n00000001``, ...),
``LOC_{train,val}_solution.csv``, ``ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<i>.JPEG``,
``ILSVRC/Data/CLS-LOC/val/synthetic_val_<i>.JPEG``, and ``spec.json`` (the parameters, written last:
a folder without it is incomplete). :func:`ensure_synthetic_loc` generates it on first use under
``<root>/synthetic_loc_<hash of the spec>``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np

from detres.data.localization.formats import SYNSET_MAPPING, write_solution_csv, write_synset_mapping
from detres.data.localization.ilsvrc import image_folder, solution_csv
from detres.utils.file_io import build_folder_atomically

__all__ = [
    "MAX_CLASSES",
    "SyntheticLocSpec",
    "ensure_synthetic_loc",
    "generate_synthetic_loc",
    "synthetic_loc_classes",
    "synthetic_loc_folder",
]

logger = logging.getLogger(__name__)

SHAPES = ("disc", "square", "triangle", "ring", "cross", "star", "diamond", "crescent")
TEXTURES = ("solid", "striped", "dotted")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
_GENERATOR_VERSION = 2  # part of the folder hash: bump when the pictures change
_SPLIT_IDS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticLocSpec:
    num_train: int = 2000
    num_val: int = 300
    num_classes: int = 8
    image_size: Tuple[int, int] = (96, 160)  # each side uniform in [min, max]
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.image_size
        if not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"DATASETS.SYNTHETIC_LOC.NUM_CLASSES must be in [1, {MAX_CLASSES}], "
                             f"got {self.num_classes}")
        if not 32 <= lo <= hi:
            raise ValueError(f"DATASETS.SYNTHETIC_LOC.IMAGE_SIZE must be [min, max] with 32 <= min <= max, "
                             f"got {[lo, hi]}")
        if self.num_train < 1 or self.num_val < 1:
            raise ValueError(f"need NUM_TRAIN, NUM_VAL >= 1, got {self.num_train}, {self.num_val}")

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": _GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def _hue(label: int, num_classes: int) -> int:
    """OpenCV hue (0..179) of a class: the classes spread evenly around the colour wheel."""
    return int(round(180 * label / num_classes)) % 180


def synthetic_loc_classes(num_classes: int) -> Tuple[List[str], List[str]]:
    """``(wnids, descriptions)`` of the classes, e.g. ``("n00000000", "solid disc, hue 0 degrees")``."""
    wnids = [f"n{k:08d}" for k in range(num_classes)]
    descriptions = [f"{TEXTURES[k // len(SHAPES)]} {SHAPES[k % len(SHAPES)]}, hue {2 * _hue(k, num_classes)} degrees"
                    for k in range(num_classes)]
    return wnids, descriptions


def _polygon(mask: np.ndarray, points: np.ndarray) -> None:
    h, w = mask.shape
    scaled = np.round(points * [w - 1, h - 1]).astype(np.int32)
    cv2.fillPoly(mask, [scaled], 1)


def _shape_mask(shape: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) uint8 mask of ``shape`` stretched over an ``h`` x ``w`` patch."""
    mask = np.zeros((h, w), np.uint8)
    centre, axes = (round((w - 1) / 2), round((h - 1) / 2)), (max(1, (w - 1) // 2), max(1, (h - 1) // 2))
    if shape in ("disc", "ring", "crescent"):
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        if shape == "ring":
            cv2.ellipse(mask, centre, (max(1, axes[0] * 6 // 10), max(1, axes[1] * 6 // 10)), 0, 0, 360, 0, -1)
        elif shape == "crescent":
            side = 1 if rng.random() < 0.5 else -1
            cv2.ellipse(mask, (centre[0] + side * w // 3, centre[1]), axes, 0, 0, 360, 0, -1)
    elif shape == "square":
        mask[:] = 1
    elif shape == "triangle":
        points = np.array([[0.5, 0.0], [1.0, 1.0], [0.0, 1.0]])
        _polygon(mask, points if rng.random() < 0.5 else np.array([[0.5, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    elif shape == "cross":
        mask[h // 3: h - h // 3, :] = 1
        mask[:, w // 3: w - w // 3] = 1
    elif shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 0.5, 0.2)
        _polygon(mask, np.stack([0.5 + radii * np.cos(angles), 0.55 + radii * np.sin(angles) * 1.05], 1))
    else:  # diamond
        _polygon(mask, np.array([[0.5, 0.0], [1.0, 0.5], [0.5, 1.0], [0.0, 0.5]]))
    return mask


def _texture(texture: str, hue: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float32 BGR fill in ``hue``: solid, or stripes / dots of a light and a dark shade."""
    saturation, value = int(rng.integers(170, 256)), int(rng.integers(170, 256))
    shades = np.array([[[hue, saturation, value], [hue, saturation, value * 45 // 100]]], np.uint8)
    light, dark = cv2.cvtColor(shades, cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    if texture == "solid":
        return np.broadcast_to(light, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5, 9)
    if texture == "striped":
        theta = rng.uniform(0, np.pi)
        on = ((xx * np.cos(theta) + yy * np.sin(theta)) / period) % 1.0 < 0.5
    else:  # dotted
        on = ((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period * 0.3) ** 2
    return np.where(on[..., None], dark, light)


def _paste(image: np.ndarray, label: int, num_classes: int, size: Tuple[float, float],
           rng: np.random.Generator) -> List[int]:
    """Draw class ``label`` with extent ``size`` = (h, w) at a random place that fits; returns its tight box
    ``[x1, y1, x2, y2]`` (pixel-inclusive: first and last covered column / row)."""
    h, w = image.shape[:2]
    ph, pw = max(3, min(h, round(size[0]))), max(3, min(w, round(size[1])))
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    mask = _shape_mask(SHAPES[label % len(SHAPES)], ph, pw, rng).astype(bool)
    fill = _texture(TEXTURES[label // len(SHAPES)], _hue(label, num_classes), ph, pw, rng)
    image[y0:y0 + ph, x0:x0 + pw][mask] = fill[mask]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1])]


def _render(spec: SyntheticLocSpec, label: int, rng: np.random.Generator) -> Tuple[np.ndarray, List[int]]:
    """One (H, W, 3) uint8 BGR image of class ``label`` and the box of its dominant object."""
    h, w = (int(v) for v in rng.integers(spec.image_size[0], spec.image_size[1] + 1, size=2))
    short = min(h, w)
    blotches = cv2.resize(rng.normal(0, 12, size=(3, 4, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grey = rng.uniform(60, 190) + rng.uniform(-15, 15, size=3)  # a low-saturation background colour
    image = grey.astype(np.float32) + blotches
    for _ in range(int(rng.integers(2, 5))):
        other = (label + int(rng.integers(1, spec.num_classes))) % spec.num_classes if spec.num_classes > 1 else label
        side = rng.uniform(0.08, 0.16) * short
        _paste(image, other, spec.num_classes, (side, side), rng)
    extent, aspect = rng.uniform(0.2, 0.9) * short, np.exp(rng.uniform(np.log(0.6), np.log(1.6)))
    box = _paste(image, label, spec.num_classes, (extent / np.sqrt(aspect), extent * np.sqrt(aspect)), rng)
    image += rng.standard_normal(image.shape, dtype=np.float32) * 8.0
    return np.clip(image, 0, 255).astype(np.uint8), box


def _write_split(spec: SyntheticLocSpec, out: Path, split: str, wnids: List[str]) -> None:
    folder, rows = image_folder(out, split), []
    for i in range(spec.num_train if split == "train" else spec.num_val):
        label = i % spec.num_classes
        image, box = _render(spec, label, np.random.default_rng([spec.seed, _SPLIT_IDS[split], i]))
        image_id = f"{wnids[label]}_{i}" if split == "train" else f"synthetic_val_{i + 1:08d}"
        path = folder / (wnids[label] if split == "train" else "") / f"{image_id}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
            raise OSError(f"cannot write {path}")
        rows.append((image_id, [(wnids[label], box)]))
    write_solution_csv(solution_csv(out, split), rows)


def generate_synthetic_loc(out: os.PathLike, spec: SyntheticLocSpec) -> Path:
    """Write the dataset of ``spec`` into ``out`` (created; existing files are overwritten)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wnids, descriptions = synthetic_loc_classes(spec.num_classes)
    write_synset_mapping(out / SYNSET_MAPPING, wnids, descriptions)
    for split in _SPLIT_IDS:
        _write_split(spec, out, split, wnids)
    (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return out


def synthetic_loc_folder(root: os.PathLike, spec: SyntheticLocSpec) -> Path:
    """Where ``ensure_synthetic_loc(root, spec)`` puts the dataset of ``spec``."""
    return Path(root) / f"synthetic_loc_{spec.key()}"


def ensure_synthetic_loc(root: os.PathLike, spec: SyntheticLocSpec) -> Path:
    """``root/synthetic_loc_<hash of spec>``, generated on first use into a temporary folder that is then
    renamed into place (:func:`~detres.utils.file_io.build_folder_atomically`): concurrent or interrupted
    runs never see a half-written dataset."""
    target = synthetic_loc_folder(root, spec)
    if (target / "spec.json").is_file():
        return target
    logger.info("Generating the synthetic localization dataset (%d train + %d val images, %d classes) into %s",
                spec.num_train, spec.num_val, spec.num_classes, target)
    start = time.perf_counter()
    build_folder_atomically(target, lambda tmp: generate_synthetic_loc(tmp, spec), marker="spec.json")
    logger.info("Generated %s in %.1f s", target, time.perf_counter() - start)
    return target
