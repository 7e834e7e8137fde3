#!/usr/bin/env python
"""Time COCO bbox evaluation with both backends (``TEST.COCO_EVAL_BACKEND``) on a generated data set.

    python tools/benchmark_coco_eval.py [--images 5000] [--detections 100] [--classes 80] [--seed 0]

The ground truth has ``--images`` images (640x480) with 1 to 15 objects each (about 4% crowd), of
every COCO size range; the results hold ``--detections`` detections per image: jittered copies of the
ground truth (some with the wrong class) and random boxes, as a detector's top-scoring outputs look.
Each backend runs ``evaluate_coco`` (the results loaded, matched, accumulated and summarized) once;
the script prints both times, the ratio, and whether the 12 numbers and per-category AP agree (to 1e-9
percent: per-category means may differ in the last bit).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.data.detection.coco import load_coco_api  # noqa: E402
from detres.evaluation.coco_evaluation import COCO_EVAL_BACKENDS, COCO_METRICS, evaluate_coco  # noqa: E402

IMAGE_W, IMAGE_H = 640, 480


def _random_xywh(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4) XYWH boxes inside a 640x480 image, sides log-uniform in [4, 400] pixels (all size ranges)."""
    wh = np.exp(rng.uniform(math.log(4), math.log(400), size=(n, 2)))
    wh = np.minimum(wh, [IMAGE_W - 1, IMAGE_H - 1])
    xy = rng.uniform(0, 1, size=(n, 2)) * ([IMAGE_W, IMAGE_H] - wh)
    return np.concatenate([xy, wh], axis=1)


def synthetic_coco(num_images: int, dets_per_image: int, num_classes: int = 80,
                   seed: int = 0) -> Tuple[dict, List[dict]]:
    """``(ground truth dataset dict, results list)`` in the COCO formats; deterministic for ``seed``.

    Category ids are 1, 3, 5, ... (not contiguous, as in COCO). Boxes are XYWH absolute pixels.
    """
    rng = np.random.default_rng(seed)
    cat_ids = [2 * k + 1 for k in range(num_classes)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": IMAGE_W, "height": IMAGE_H})
        n = int(rng.integers(1, 16))
        boxes, classes = _random_xywh(rng, n), rng.choice(cat_ids, size=n)
        for box, c in zip(boxes, classes):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(c),
                                "bbox": box.round(2).tolist(), "area": float(box[2] * box[3]),
                                "iscrowd": int(rng.random() < 0.04)})
        from_gt = rng.integers(0, n, size=dets_per_image // 2)  # half near a ground-truth box, half random
        near = boxes[from_gt] + boxes[from_gt][:, [2, 3, 2, 3]] * rng.normal(0.0, 0.1, size=(len(from_gt), 4))
        det_boxes = np.concatenate([near, _random_xywh(rng, dets_per_image - len(from_gt))])
        det_classes = np.concatenate([np.where(rng.random(len(from_gt)) < 0.8, classes[from_gt],
                                               rng.choice(cat_ids, size=len(from_gt))),
                                      rng.choice(cat_ids, size=dets_per_image - len(from_gt))])
        for box, c, s in zip(det_boxes, det_classes, rng.random(dets_per_image)):
            results.append({"image_id": image_id, "category_id": int(c),
                            "bbox": [round(float(v), 2) for v in box], "score": round(float(s), 5)})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in cat_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    """Prints and returns ``{backend: seconds, ..., "ratio": pycocotools / faster, "agree": bool}``."""
    args = parse_args(argv)
    dataset, results = synthetic_coco(args.images, args.detections, args.classes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_file = Path(tmp) / "instances.json"
        gt_file.write_text(json.dumps(dataset))
        coco_gt = load_coco_api(str(gt_file))
    print(f"{args.images} images, {len(dataset['annotations'])} ground-truth boxes, {len(results)} detections")
    timings, metrics = {}, {}
    for backend in COCO_EVAL_BACKENDS:
        start = time.perf_counter()
        metrics[backend] = evaluate_coco(coco_gt, results, source="generated", backend=backend)
        timings[backend] = time.perf_counter() - start
        print(f"{backend:>17}: {timings[backend]:8.2f} s   AP {metrics[backend]['AP']:.3f}")
    a, b = (metrics[k] for k in COCO_EVAL_BACKENDS)
    agree = a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=0.0, abs_tol=1e-9) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)
    ratio = timings["pycocotools"] / timings["faster_coco_eval"]
    print(f"speed-up: {ratio:.1f}x; the {len(COCO_METRICS)} numbers and per-category AP "
          f"{'agree to 1e-9' if agree else 'DIFFER'}")
    return {**timings, "ratio": ratio, "agree": agree}


if __name__ == "__main__":
    main()
