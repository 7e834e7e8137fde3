"""A synthetic COCO-format detection dataset: textured shapes on textured backgrounds.

Six classes of shapes (circle, square, triangle, ellipse, cross, star) of random colour and texture
(solid, stripes, noise), 1-4 per image by default, sizes drawn log-uniformly so that COCO's small
(area < 32^2), medium and large (> 96^2) objects all occur at the native image size. Later objects
may occlude earlier ones, but every object keeps at least 60% of its pixels visible; boxes and areas
are those of the visible pixels (as in COCO). Image sides are drawn independently, so landscape and
portrait images both occur. Image ``i`` of a split depends only on ``(seed, split, i)``.

Layout of an output folder: ``train/*.jpg``, ``val/*.jpg``, ``annotations/instances_{train,val}.json``
and ``spec.json`` (the parameters; written last, so a folder without it is incomplete).

CLI: ``python -m detres.data.detection.synthetic --out DIR --num-train N --num-val M --seed S``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from detres.utils.file_io import build_folder_atomically

__all__ = [
    "CLASSES",
    "SyntheticDetectionSpec",
    "ensure_synthetic_detection",
    "generate_synthetic_detection",
    "synthetic_detection_folder",
]

logger = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle", "ellipse", "cross", "star")
_MIN_VISIBLE = 0.6
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class SyntheticDetectionSpec:
    num_train: int = 1000
    num_val: int = 200
    seed: int = 0
    image_size: Tuple[int, int] = (176, 256)  # each side uniform in [min, max]
    objects_per_image: Tuple[int, int] = (1, 4)
    object_size: Tuple[int, int] = (30, 180)  # extent in pixels, log-uniform, at most 0.9 * shorter side

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def _shape_mask(cls: int, h: int, w: int, cx: float, cy: float, size: float, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool mask of one shape of class ``cls`` and extent ``size`` centred at ``(cx, cy)``."""
    mask = np.zeros((h, w), np.uint8)
    r = size / 2
    angle = math.radians(rng.uniform(-15, 15))

    def polygon(radii: List[float], angles: List[float]) -> None:
        pts = [(cx + rad * math.cos(a + angle), cy + rad * math.sin(a + angle)) for rad, a in zip(radii, angles)]
        cv2.fillPoly(mask, [np.round(np.array(pts)).astype(np.int32)], 1)

    name = CLASSES[cls]
    if name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(1, round(r)), 1, -1)
    elif name == "square":
        polygon([r * math.sqrt(2)] * 4, [math.pi / 4 + k * math.pi / 2 for k in range(4)])
    elif name == "triangle":
        polygon([r * 1.1] * 3, [-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)])
    elif name == "ellipse":
        ratio = rng.uniform(0.35, 0.55)
        degrees = math.degrees(angle) + (90 if rng.random() < 0.5 else 0)
        cv2.ellipse(mask, (round(cx), round(cy)), (max(1, round(r)), max(1, round(r * ratio))), degrees, 0, 360, 1, -1)
    elif name == "cross":
        t = 0.17 * size
        corners = [(t, r), (t, t), (r, t), (r, -t), (t, -t), (t, -r), (-t, -r), (-t, -t), (-r, -t), (-r, t), (-t, t), (-t, r)]
        polygon([math.hypot(x, y) for x, y in corners], [math.atan2(y, x) for x, y in corners])
    else:  # star
        polygon([r * (1.05 if k % 2 == 0 else 0.45) for k in range(10)], [-math.pi / 2 + k * math.pi / 5 for k in range(10)])
    return mask.astype(bool)


def _texture(h: int, w: int, base: np.ndarray, rng: np.random.Generator, kind: str, strength: float) -> np.ndarray:
    """(h, w, 3) float32 layer of colour ``base`` with a ``kind`` texture: solid, stripes, noise, blobs, gradient."""
    layer = np.broadcast_to(base.astype(np.float32), (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "stripes":
        theta, period = rng.uniform(0, math.pi), rng.uniform(5, 14)
        phase = ((xx * math.cos(theta) + yy * math.sin(theta)) / period) % 1.0 < 0.5
        layer += np.where(phase[..., None], strength, -strength).astype(np.float32) * rng.choice([-1, 1], size=3)
    elif kind == "noise":
        layer += rng.normal(0, strength * 0.6, size=(h, w, 3)).astype(np.float32)
    elif kind == "blobs":
        coarse = rng.normal(0, strength, size=(max(2, h // 24), max(2, w // 24), 3)).astype(np.float32)
        layer += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    elif kind == "gradient":
        theta = rng.uniform(0, 2 * math.pi)
        ramp = (xx * math.cos(theta) + yy * math.sin(theta)) / max(h, w)
        layer += (ramp[..., None] * 2 * strength).astype(np.float32)
    return layer


def _render_image(spec: SyntheticDetectionSpec, rng: np.random.Generator):
    h, w = (int(rng.integers(spec.image_size[0], spec.image_size[1] + 1)) for _ in range(2))
    background = rng.uniform(50, 200, size=3)
    image = _texture(h, w, background, rng, str(rng.choice(["blobs", "stripes", "gradient", "noise"])), 30.0)
    masks: List[np.ndarray] = []  # visible pixels of each object so far
    areas: List[int] = []  # full pixel count of each object
    classes: List[int] = []
    count = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    max_size = min(spec.object_size[1], 0.9 * min(h, w))
    for _ in range(count):
        cls = int(rng.integers(len(CLASSES)))
        size = math.exp(rng.uniform(math.log(spec.object_size[0]), math.log(max(max_size, spec.object_size[0]))))
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
            mask = _shape_mask(cls, h, w, cx, cy, size, rng)
            if mask.any() and all((m & ~mask).sum() >= _MIN_VISIBLE * a for m, a in zip(masks, areas)):
                break
        else:
            continue
        while True:  # a colour that stands out from the background
            colour = rng.uniform(0, 255, size=3)
            if np.linalg.norm(colour - background) > 100:
                break
        kind = str(rng.choice(["solid", "stripes", "noise"]))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        inside = mask[y0:y1, x0:x1]
        image[y0:y1, x0:x1][inside] = _texture(y1 - y0, x1 - x0, colour, rng, kind, 35.0)[inside]
        masks = [m & ~mask for m in masks] + [mask]
        areas.append(int(mask.sum()))
        classes.append(cls)
    image += rng.normal(0, 4, size=image.shape)
    image = cv2.GaussianBlur(np.clip(image, 0, 255).astype(np.uint8), (3, 3), 0.6)
    return image, masks, classes


def _write_split(spec: SyntheticDetectionSpec, out: Path, split: str, num: int) -> None:
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1, i])
        image, masks, classes = _render_image(spec, rng)
        file_name = f"{i:06d}.jpg"
        if not cv2.imwrite(str(out / split / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
            raise OSError(f"cannot write {out / split / file_name}")
        images.append({"id": i + 1, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for mask, cls in zip(masks, classes):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cls + 1, "iscrowd": 0,
                "bbox": [x, y, bw, bh], "area": float(mask_utils.area(rle)), "segmentation": rle,
            })
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASSES)]
    (out / "annotations").mkdir(exist_ok=True)
    with open(out / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump({"info": {"description": "detres synthetic shapes", **asdict(spec)}, "licenses": [],
                   "images": images, "annotations": annotations, "categories": categories}, f)


def generate_synthetic_detection(out: os.PathLike, spec: SyntheticDetectionSpec) -> Path:
    """Write the dataset of ``spec`` into ``out`` (created; existing files are overwritten)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_split(spec, out, "train", spec.num_train)
    _write_split(spec, out, "val", spec.num_val)
    (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return out


def synthetic_detection_folder(root: os.PathLike, spec: SyntheticDetectionSpec) -> Path:
    """Where ``ensure_synthetic_detection(root, spec)`` puts the dataset of ``spec``."""
    return Path(root) / f"synthetic_det_{spec.key()}"


def ensure_synthetic_detection(root: os.PathLike, spec: SyntheticDetectionSpec) -> Path:
    """``root/synthetic_det_<hash of spec>``, generated on first use. Generation happens in a temporary
    folder renamed into place (:func:`~detres.utils.file_io.build_folder_atomically`), so concurrent or
    interrupted runs never see a half-written dataset."""
    target = synthetic_detection_folder(root, spec)
    if (target / "spec.json").is_file():
        return target
    logger.info("Generating the synthetic detection dataset (%d train + %d val images) into %s",
                spec.num_train, spec.num_val, target)
    start = time.perf_counter()
    build_folder_atomically(target, lambda tmp: generate_synthetic_detection(tmp, spec), marker="spec.json")
    logger.info("Generated %s in %.1f s", target, time.perf_counter() - start)
    return target


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=SyntheticDetectionSpec.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticDetectionSpec.num_val)
    parser.add_argument("--seed", type=int, default=SyntheticDetectionSpec.seed)
    parser.add_argument("--image-size", type=int, nargs=2, default=SyntheticDetectionSpec.image_size)
    parser.add_argument("--objects-per-image", type=int, nargs=2, default=SyntheticDetectionSpec.objects_per_image)
    parser.add_argument("--object-size", type=int, nargs=2, default=SyntheticDetectionSpec.object_size)
    args = parser.parse_args(argv)
    spec = SyntheticDetectionSpec(args.num_train, args.num_val, args.seed, tuple(args.image_size),
                                  tuple(args.objects_per_image), tuple(args.object_size))
    out = generate_synthetic_detection(args.out, spec)
    print(f"wrote {spec.num_train} training and {spec.num_val} validation images to {out}")


if __name__ == "__main__":
    main()
