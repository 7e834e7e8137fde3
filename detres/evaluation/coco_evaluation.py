"""COCO detection evaluation with pycocotools' ``COCOeval`` (bbox).

``COCOEvaluator`` (evaluator type "coco") collects the model's per-image detections ("boxes" (D, 4)
XYXY in ORIGINAL image pixels, "scores" (D,), "classes" (D,) 0-based contiguous), gathers them from all
processes, writes them in the official results format (``coco_instances_results.json``: a list of
``{"image_id", "category_id" (the dataset's own id), "bbox": [x, y, w, h], "score"}``) and returns
``{"bbox": {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl, "AP-<class>"...}}`` in
percent (NaN where a size range has no ground truth). ``evaluate_coco`` evaluates any such results
list on its own (``tools/evaluate.py``). A dataset without annotations (images only, e.g.
``coco_2017_test-dev``) is not scored: the results file is written for the evaluation server and
``evaluate()`` returns ``{}``.

``TEST.COCO_EVAL_BACKEND`` picks the COCO API: "pycocotools" (default) or "faster_coco_eval" (the
optional ``faster-coco-eval`` package: the same API and numbers, its matching and accumulation in C++).

With ``TEST.VIS_IMAGES = n`` the first ``n`` images of the main process become ground truth vs
detection pictures, drawn on the original image file (``file_name`` of the model input), put into
the active ``EventStorage`` (TensorBoard), when there is one, and written to ``output_dir/pictures/``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detres.config import ConfigError
from detres.data.catalog import MetadataCatalog
from detres.data.detection.coco import contiguous_id_map, load_coco_api
from detres.evaluation.build import EVALUATOR_REGISTRY

__all__ = ["COCO_EVAL_BACKENDS", "COCO_METRICS", "COCOEvaluator", "coco_api_classes", "detections_to_coco_results",
           "evaluate_coco", "format_results_table"]

logger = logging.getLogger(__name__)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULTS_FILE = "coco_instances_results.json"
COCO_EVAL_BACKENDS = ("pycocotools", "faster_coco_eval")


def coco_api_classes(backend: str = "pycocotools") -> Tuple[type, type]:
    """``(COCO, COCOeval)`` of ``backend`` (one of ``COCO_EVAL_BACKENDS``, ``TEST.COCO_EVAL_BACKEND``)."""
    if backend == "pycocotools":
        return COCO, COCOeval
    if backend != "faster_coco_eval":
        raise ConfigError(f"TEST.COCO_EVAL_BACKEND must be one of {COCO_EVAL_BACKENDS}, got {backend!r}")
    try:
        from faster_coco_eval.core.coco import COCO as FastCOCO
        from faster_coco_eval.core.faster_eval_api import COCOeval as FastCOCOeval  # pycocotools-compatible printing
    except ImportError:
        raise ConfigError("TEST.COCO_EVAL_BACKEND 'faster_coco_eval' needs the faster-coco-eval package: "
                         "pip install faster-coco-eval (or pip install -e .[fast-eval])") from None
    return FastCOCO, FastCOCOeval


def _as_backend(coco_gt: COCO, coco_class: type) -> COCO:
    """``coco_gt`` as an instance of the backend's ``COCO`` class (the same dataset dict, re-indexed)."""
    if isinstance(coco_gt, coco_class):
        return coco_gt
    converted = coco_class()
    converted.dataset = coco_gt.dataset
    with contextlib.redirect_stdout(io.StringIO()):
        converted.createIndex()
    return converted


def detections_to_coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                               contiguous_to_dataset_id: Dict[int, int]) -> List[dict]:
    """One image's detections (boxes (D, 4) XYXY) as results-format dicts (XYWH, dataset category ids)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {"image_id": int(image_id), "category_id": int(contiguous_to_dataset_id[int(c)]),
         "bbox": [round(float(v), 3) for v in box], "score": round(float(s), 5)}
        for box, s, c in zip(xywh, np.asarray(scores).reshape(-1), np.asarray(classes).reshape(-1))
    ]


def _check_results(coco_gt: COCO, results: Sequence[dict], source: str) -> None:
    for key in ("image_id", "category_id", "bbox", "score"):
        if results and key not in results[0]:
            raise ValueError(f"{source}: detection results need the key {key!r} (official COCO results format)")
    unknown_images = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown_images:
        raise ValueError(f"{source}: results for image ids not in the ground truth, e.g. {sorted(unknown_images)[:5]}")
    unknown_cats = {r["category_id"] for r in results} - set(coco_gt.getCatIds())
    if unknown_cats:
        raise ValueError(f"{source}: results with category ids not in the ground truth: {sorted(unknown_cats)[:10]}; "
                         "results must use the dataset's own category ids, not contiguous indices")
    bad = [r for r in results if len(r["bbox"]) != 4 or not all(math.isfinite(v) for v in r["bbox"])]
    if bad:
        raise ValueError(f"{source}: {len(bad)} results have a malformed bbox, e.g. {bad[0]}")


def evaluate_coco(coco_gt: COCO, results: Sequence[dict], img_ids: Optional[Iterable[int]] = None,
                  source: str = "results", backend: str = "pycocotools") -> "OrderedDict[str, float]":
    """The 12 COCO numbers and per-category AP, in percent, of ``results`` on ``coco_gt``.

    ``img_ids`` restricts the evaluation to those images (default: every ground-truth image);
    ``backend``: see ``coco_api_classes``.
    """
    coco_class, eval_class = coco_api_classes(backend)
    _check_results(coco_gt, results, source)
    _, class_names = contiguous_id_map(coco_gt)
    if not results:
        logger.warning("%s: no detections at all; every AP and AR is 0.", source)
        return OrderedDict([(k, 0.0) for k in COCO_METRICS] + [(f"AP-{n}", 0.0) for n in class_names])
    coco_gt = _as_backend(coco_gt, coco_class)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r, bbox=list(r["bbox"])) for r in results])  # loadRes edits dicts
    evaluation = eval_class(coco_gt, coco_dt, "bbox")
    if img_ids is not None:
        evaluation.params.imgIds = sorted(set(img_ids))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    logger.info("COCOeval (bbox, %s):\n%s", backend, printed.getvalue().strip())
    metrics = OrderedDict((k, float(v) * 100 if v >= 0 else float("nan")) for k, v in zip(COCO_METRICS, evaluation.stats))
    precision = evaluation.eval["precision"]  # (IoU thresholds, recall points, categories, areas, max dets)
    for k, name in enumerate(class_names):  # params.catIds are sorted ids, i.e. contiguous order
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        metrics[f"AP-{name}"] = float(p.mean() * 100) if p.size else float("nan")
    return metrics


def format_results_table(metrics: Dict[str, float], columns: int = 3) -> str:
    """The 12 standard numbers on two lines, then per-category AP in ``columns`` column pairs."""
    head = "  ".join(f"{k:>6}" for k in COCO_METRICS)
    values = "  ".join(f"{metrics.get(k, float('nan')):6.2f}" for k in COCO_METRICS)
    per_class = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
    width = max([len(n) for n, _ in per_class] + [8])
    rows = []
    for i in range(0, len(per_class), columns):
        rows.append(" | ".join(f"{n:<{width}} {v:6.2f}" for n, v in per_class[i:i + columns]))
    table = f"{head}\n{values}"
    if rows:
        table += "\nper-category AP:\n" + "\n".join(rows)
    return table


class COCOEvaluator:
    """See the module docstring. ``output_dir`` (optional) receives ``coco_instances_results.json``."""

    def __init__(self, cfg, dataset_name: str, output_dir: Optional[str] = None) -> None:
        meta = MetadataCatalog.get(dataset_name)
        if not getattr(meta, "json_file", None):
            raise ValueError(f"dataset {dataset_name!r} has no json_file in its metadata; COCO evaluation needs one")
        self.dataset_name, self.json_file, self.output_dir = dataset_name, meta.json_file, output_dir
        self.class_names = getattr(meta, "thing_classes", None)
        self.vis_images = int(cfg.TEST.VIS_IMAGES) if cfg is not None else 0
        self.backend = cfg.TEST.COCO_EVAL_BACKEND if cfg is not None else "pycocotools"
        coco_api_classes(self.backend)  # an unknown or missing backend fails now, not after inference
        self.reset()

    def reset(self) -> None:
        self._predictions: List[dict] = []  # {"image_id", "boxes", "scores", "classes"} as numpy arrays
        self._pictures: List[np.ndarray] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        from detres.utils.comm import is_main_process

        for inp, out in zip(inputs, outputs):
            self._predictions.append({"image_id": inp["image_id"], **{
                k: out[k].detach().cpu().numpy() for k in ("boxes", "scores", "classes")}})
            if len(self._pictures) < self.vis_images and is_main_process():
                self._pictures.append(self._picture(inp, out))

    def _picture(self, inp: dict, out: dict) -> np.ndarray:
        """Ground truth vs detections (3, H, 2W + 4) RGB on the original image; the input's ground
        truth, in the pixels of the resized model input, is scaled back to the original's."""
        from detres.data.detection.mapper import read_image
        from detres.utils.visualizer import gt_vs_pred_picture

        image = read_image(inp["file_name"], "BGR")
        h, w = inp["image"].shape[-2:]
        scale = np.array([inp["width"] / w, inp["height"] / h] * 2)
        gt_boxes = inp["gt_boxes"].detach().cpu().numpy().reshape(-1, 4) * scale
        return gt_vs_pred_picture(image, gt_boxes, inp["gt_classes"].tolist(), out, self.class_names)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        from detres.utils import comm

        predictions = [p for part in comm.all_gather(self._predictions) for p in part]
        if not comm.is_main_process():
            return {}
        coco_gt = load_coco_api(self.json_file)
        id_map, _ = contiguous_id_map(coco_gt)
        to_dataset_id = {v: k for k, v in id_map.items()}
        results = [r for p in predictions for r in detections_to_coco_results(
            p["image_id"], p["boxes"], p["scores"], p["classes"], to_dataset_id)]
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, RESULTS_FILE)
            with open(path, "w") as f:
                json.dump(results, f)
            logger.info("Wrote %d detections to %s", len(results), path)
        if not coco_gt.dataset["annotations"]:  # images only, e.g. test-dev: scored by the evaluation server
            logger.warning("%s has no annotations: evaluation skipped; submit %s to the evaluation server",
                           self.dataset_name, path if self.output_dir else f"the {RESULTS_FILE} of an output folder")
            return {}
        metrics = evaluate_coco(coco_gt, results, img_ids=[p["image_id"] for p in predictions],
                                source=self.dataset_name, backend=self.backend)
        logger.info("COCO bbox evaluation of %s (%d images):\n%s", self.dataset_name, len(predictions),
                    format_results_table(metrics))
        self._put_pictures()
        return {"bbox": metrics}

    def _put_pictures(self) -> None:
        """Ground truth vs detections pictures go to TensorBoard (through the event storage, during
        training) and, as JPEGs, to ``output_dir/pictures``."""
        from detres.utils.events import get_event_storage

        storage = get_event_storage()
        folder = os.path.join(self.output_dir, "pictures") if self.output_dir and self._pictures else None
        if folder:
            os.makedirs(folder, exist_ok=True)
        for i, picture in enumerate(self._pictures):
            if storage is not None:
                storage.put_image(f"{self.dataset_name}/gt_vs_pred_{i}", picture)
            if folder:
                bgr = np.ascontiguousarray(picture.transpose(1, 2, 0)[:, :, ::-1])  # (3, H, W) RGB -> (H, W, 3) BGR
                cv2.imwrite(os.path.join(folder, f"gt_vs_pred_{i}.jpg"), bgr)
        if folder:
            logger.info("Wrote %d ground truth (left) vs detections (right) pictures to %s", len(self._pictures), folder)


@EVALUATOR_REGISTRY.register()
def coco(cfg, dataset_name: str, output_dir: Optional[str] = None) -> COCOEvaluator:
    """Evaluator type "coco" (``MetadataCatalog.get(name).evaluator_type``)."""
    return COCOEvaluator(cfg, dataset_name, output_dir)
