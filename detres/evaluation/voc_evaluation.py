"""PASCAL VOC detection evaluation with the devkit's conventions.

``VOCEvaluator`` (evaluator type "voc") collects the model's per-image detections ("boxes" (D, 4) XYXY
in ORIGINAL image pixels, "scores" (D,), "classes" (D,) 0-based), gathers them from all processes,
writes the devkit's result files into its output folder and scores them with ``evaluate_voc``, a pure
function of (ground-truth records, per-class detections) that ``tools/evaluate.py`` also runs on
result files.

Conventions (py-faster-rcnn's ``voc_eval``, as Detectron2; the MATLAB devkit's ``VOCevaldet`` differs
only in counting an IoU exactly at the threshold as a match, ``>=``):

* per class, detections are ranked by score (ties keep their order); each is matched to the object of
  its class in its image with the largest IoU. It is a true positive when that IoU is > the threshold
  and the object is not difficult and not yet matched; a false positive when the IoU is <= the
  threshold or the object was already matched (duplicate); neither when the object is difficult.
  Difficult objects do not count in the recall's denominator.
* IoU in the devkit's pixel-inclusive "+1" widths and heights, which is the plain IoU of detres's
  continuous boxes (see ``detres.data.detection.voc``).
* "11point" (VOC2007): mean over recall thresholds ``0:0.1:1`` of the maximal precision at a recall
  >= the threshold (0 where none). "area" (VOC2010+): area under the precision envelope.
* a class without detections has AP 0; a class without non-difficult objects in the evaluated
  images has AP NaN and is left out of the mean.

Metrics (percent), in this order (``TEST.VOC_METRIC`` picks which metric comes first):
``mAP_11point`` and ``mAP_area`` (mean AP over classes at IoU 0.5), ``AP`` (``mAP_area`` averaged
over IoU 0.50, 0.55, ..., 0.95, the COCO-style number Detectron2 reports; Detectron2 uses the
11-point metric for it on VOC2007), ``AP75`` (``mAP_area`` at IoU 0.75), then per class
``AP_11point-<class>`` and ``AP_area-<class>`` at IoU 0.5. Detectron2's "AP50" is ``mAP_11point`` on
VOC2007 and ``mAP_area`` on VOC2012.

Result files: ``comp4_det_<split>_<class>.txt`` (e.g. ``comp4_det_test_aeroplane.txt``), one line per
detection ``<image id> <score> <x1> <y1> <x2> <y2>`` in VOC 1-based pixel-inclusive coordinates.
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Hashable, Iterable, List, Optional, Sequence

import numpy as np

from detres.data.catalog import MetadataCatalog
from detres.data.detection.voc import detres_to_voc_box, load_voc_instances, voc_to_detres_box
from detres.evaluation.build import EVALUATOR_REGISTRY

__all__ = [
    "VOC_METRICS",
    "IOU_THRESHOLDS",
    "ClassDetections",
    "predictions_by_class",
    "voc_ap",
    "evaluate_voc",
    "format_voc_table",
    "write_voc_results",
    "read_voc_results",
    "VOCEvaluator",
]

logger = logging.getLogger(__name__)

VOC_METRICS = ("11point", "area")
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


@dataclass
class ClassDetections:
    """One class's detections over a dataset: ``image_ids`` (D,), ``scores`` (D,) and ``boxes`` (D, 4)
    detres XYXY (continuous, original image pixels)."""

    image_ids: List[Hashable]
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls([], np.zeros(0), np.zeros((0, 4)))


def predictions_by_class(predictions: Iterable[dict], num_classes: int) -> List[ClassDetections]:
    """Per-image predictions ``{"image_id", "boxes" (D, 4), "scores" (D,), "classes" (D,)}`` regrouped
    by class (index = class)."""
    parts: List[List[tuple]] = [[] for _ in range(num_classes)]
    for p in predictions:
        boxes = np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(p["scores"], dtype=np.float64).reshape(-1)
        classes = np.asarray(p["classes"]).reshape(-1).astype(np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"image {p['image_id']!r}: class indices outside 0..{num_classes - 1}: "
                             f"{sorted(set(classes.tolist()))}")
        for c in np.unique(classes):
            keep = classes == c
            parts[c].append(([p["image_id"]] * int(keep.sum()), scores[keep], boxes[keep]))
    return [ClassDetections([i for ids, _, _ in part for i in ids], np.concatenate([s for _, s, _ in part]),
                            np.concatenate([b for _, _, b in part])) if part else ClassDetections.empty()
            for part in parts]


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str) -> float:
    """AP (a fraction) of a ranked list's cumulative ``recall`` and ``precision`` (both (D,))."""
    if metric == "11point":
        # the devkit's 0:0.1:1 (and py-faster-rcnn's np.arange(0, 1.1, 0.1)), float rounding included
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.arange(0.0, 1.1, 0.1)]))
    if metric != "area":
        raise ValueError(f"VOC metric must be one of {VOC_METRICS}, got {metric!r}")
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope: max precision at recall >= r
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of XYXY boxes ``a`` (N, 4) and ``b`` (M, 4), continuous coordinates."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def _class_tp_fp(gt: Dict[Hashable, tuple], dets: ClassDetections, thresholds: Sequence[float]):
    """``(tp, fp)``, each (T, D) in descending score order, of one class at each IoU threshold.
    ``gt`` maps image id -> (boxes (G, 4), difficult (G,) bool) of this class."""
    order = np.argsort(-dets.scores, kind="stable")
    ids = [dets.image_ids[i] for i in order]
    boxes = dets.boxes[order]
    best_iou, best_gt = np.full(len(ids), -np.inf), np.zeros(len(ids), dtype=np.int64)
    by_image: Dict[Hashable, List[int]] = {}
    for d, image_id in enumerate(ids):
        by_image.setdefault(image_id, []).append(d)
    for image_id, rows in by_image.items():
        gt_boxes = gt.get(image_id, (np.zeros((0, 4)), None))[0]
        if len(gt_boxes):
            iou = _pairwise_iou(boxes[rows], gt_boxes)
            best_gt[rows], best_iou[rows] = iou.argmax(axis=1), iou.max(axis=1)
    thresholds = np.asarray(thresholds)
    tp, fp = np.zeros((len(thresholds), len(ids))), np.zeros((len(thresholds), len(ids)))
    matched = {image_id: np.zeros((len(thresholds), len(g[0])), dtype=bool) for image_id, g in gt.items()}
    for d, (image_id, j) in enumerate(zip(ids, best_gt)):
        above = best_iou[d] > thresholds  # (T,)
        if not above.any():
            fp[:, d] = 1
        elif gt[image_id][1][j]:  # a difficult object: neither true nor false where it matches
            fp[~above, d] = 1
        else:
            new = above & ~matched[image_id][:, j]  # where the object is already matched: a duplicate
            matched[image_id][new, j] = True
            tp[new, d], fp[~new, d] = 1, 1
    return tp, fp


def _ground_truth_by_class(records: Sequence[dict], num_classes: int) -> List[Dict[Hashable, tuple]]:
    """Per class: image id -> (boxes (G, 4), difficult (G,)); every image appears in every class."""
    per_class: List[Dict[Hashable, tuple]] = [{} for _ in range(num_classes)]
    for r in records:
        anns = r["annotations"]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        difficult = np.array([bool(a.get("difficult", False)) for a in anns], dtype=bool)
        for c in range(num_classes):
            keep = classes == c
            per_class[c][r["image_id"]] = (boxes[keep], difficult[keep])
    return per_class


def _check_detections(records: Sequence[dict], detections: Sequence[ClassDetections], num_classes: int,
                      source: str) -> None:
    if len(detections) != num_classes:
        raise ValueError(f"{source}: detections of {len(detections)} classes for {num_classes} classes")
    known = {r["image_id"] for r in records}
    unknown = {i for d in detections for i in d.image_ids} - known
    if unknown:
        raise ValueError(f"{source}: detections for image ids not in the ground truth, "
                         f"e.g. {sorted(map(str, unknown))[:5]}")
    if not all(np.isfinite(d.boxes).all() and np.isfinite(d.scores).all() for d in detections):
        raise ValueError(f"{source}: detections with non-finite boxes or scores")


def evaluate_voc(records: Sequence[dict], detections: Sequence[ClassDetections], class_names: Sequence[str],
                 primary: str = "11point", source: str = "detections") -> "OrderedDict[str, float]":
    """The metrics of the module docstring, in percent, of ``detections`` (one ``ClassDetections`` per
    class) on the ground-truth ``records`` (catalog detection records with ``difficult`` flags)."""
    if primary not in VOC_METRICS:
        raise ValueError(f"TEST.VOC_METRIC must be one of {VOC_METRICS}, got {primary!r}")
    _check_detections(records, detections, len(class_names), source)
    metric_order = (primary,) + tuple(m for m in VOC_METRICS if m != primary)
    thresholds = list(IOU_THRESHOLDS)
    ap = {m: np.full((len(class_names), len(thresholds)), np.nan) for m in VOC_METRICS}  # fractions
    for c, (gt, dets) in enumerate(zip(_ground_truth_by_class(records, len(class_names)), detections)):
        num_pos = sum(int((~difficult).sum()) for _, difficult in gt.values())
        if num_pos == 0:
            continue
        tp, fp = (np.cumsum(x, axis=1) for x in _class_tp_fp(gt, dets, thresholds))
        for t in range(len(thresholds)):
            recall, precision = tp[t] / num_pos, tp[t] / np.maximum(tp[t] + fp[t], np.finfo(np.float64).eps)
            for m in VOC_METRICS:
                ap[m][c, t] = voc_ap(recall, precision, m)
    empty = [n for n, a in zip(class_names, ap["area"][:, 0]) if math.isnan(a)]
    if empty:
        logger.warning("%s: no (non-difficult) ground truth for %d classes, left out of the mean: %s", source,
                       len(empty), empty)
    mean = {m: _nanmean(ap[m], axis=0) * 100 for m in VOC_METRICS}  # (T,) mAP per threshold
    metrics: "OrderedDict[str, float]" = OrderedDict((f"mAP_{m}", float(mean[m][0])) for m in metric_order)
    metrics["AP"] = float(np.mean(mean["area"]))
    metrics["AP75"] = float(mean["area"][thresholds.index(0.75)])
    for c, name in enumerate(class_names):
        for m in metric_order:
            metrics[f"AP_{m}-{name}"] = float(ap[m][c, 0] * 100)
    return metrics


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN; NaN where every value is NaN (without numpy's warning)."""
    count = (~np.isnan(values)).sum(axis=axis)
    return np.where(count > 0, np.nansum(values, axis=axis) / np.maximum(count, 1), np.nan)


def format_voc_table(metrics: Dict[str, float]) -> str:
    """The mean numbers on one line, then per-class AP at IoU 0.5 in both metrics (first metric first)."""
    order = [k[len("mAP_"):] for k in metrics if k.startswith("mAP_")]
    head = "  ".join(f"mAP ({m}) {metrics[f'mAP_{m}']:.2f}" for m in order)
    head += f"  AP[.50:.95] {metrics['AP']:.2f}  AP75 {metrics['AP75']:.2f}   (IoU 0.5 unless stated)"
    names = [k[len(f"AP_{order[0]}-"):] for k in metrics if k.startswith(f"AP_{order[0]}-")]
    width = max([len(n) for n in names] + [5])
    rows = [f"{'class':<{width}} " + " ".join(f"{m:>8}" for m in order)]
    rows += [f"{n:<{width}} " + " ".join(f"{metrics[f'AP_{m}-{n}']:8.2f}" for m in order) for n in names]
    return head + "\n" + "\n".join(rows)


def _result_file(folder: str, split: str, class_name: str) -> str:
    return os.path.join(folder, f"comp4_det_{split}_{class_name}.txt")


def write_voc_results(folder: str, detections: Sequence[ClassDetections], class_names: Sequence[str],
                      split: str = "test") -> None:
    """One ``comp4_det_<split>_<class>.txt`` per class (see the module docstring), empty for a class
    without detections."""
    os.makedirs(folder, exist_ok=True)
    for name, dets in zip(class_names, detections):
        with open(_result_file(folder, split, name), "w") as f:
            for image_id, score, box in zip(dets.image_ids, dets.scores, dets.boxes):
                x1, y1, x2, y2 = detres_to_voc_box(box)
                f.write(f"{image_id} {score:.6f} {x1:.2f} {y1:.2f} {x2:.2f} {y2:.2f}\n")
    logger.info("Wrote the detections of %d classes to %s", len(class_names), _result_file(folder, split, "<class>"))


def _parse_result_line(path: str, number: int, line: str) -> tuple:
    fields = line.split()
    try:
        if len(fields) != 6:
            raise ValueError
        values = [float(v) for v in fields[1:]]
    except ValueError:
        raise ValueError(f"{path}: line {number}: expected '<image id> <score> <x1> <y1> <x2> <y2>', "
                         f"got {line.strip()!r:.80}") from None
    return fields[0], values[0], voc_to_detres_box(values[1:])


def read_voc_results(folder: str, class_names: Sequence[str], split: str = "test") -> List[ClassDetections]:
    """The detections of the ``comp4_det_<split>_<class>.txt`` files of ``folder`` (boxes back in detres
    coordinates); a class without a file has none (a warning)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"results folder not found: {folder}")
    detections, missing = [], []
    for name in class_names:
        path = _result_file(folder, split, name)
        if not os.path.isfile(path):
            missing.append(os.path.basename(path))
            detections.append(ClassDetections.empty())
            continue
        with open(path) as f:
            rows = [_parse_result_line(path, i + 1, line) for i, line in enumerate(f) if line.strip()]
        detections.append(ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float64),
                                          np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 4)))
    if len(missing) == len(class_names):
        raise FileNotFoundError(f"{folder}: none of the result files comp4_det_{split}_<class>.txt "
                                f"(e.g. {missing[0]}); is the image set {split!r} right?")
    if missing:
        logger.warning("%s: no result file for %d classes (their AP is 0): %s", folder, len(missing), missing)
    return detections


class VOCEvaluator:
    """See the module docstring. ``output_dir`` (optional) receives the comp4 result files."""

    def __init__(self, cfg, dataset_name: str, output_dir: Optional[str] = None) -> None:
        meta = MetadataCatalog.get(dataset_name)
        if not getattr(meta, "dirname", None):
            raise ValueError(f"dataset {dataset_name!r} has no dirname in its metadata; VOC evaluation needs one")
        self.dataset_name, self.output_dir = dataset_name, output_dir
        self.dirname, self.split, self.class_names = meta.dirname, meta.split, list(meta.thing_classes)
        self.metric = cfg.TEST.VOC_METRIC if cfg is not None else VOC_METRICS[0]
        if self.metric not in VOC_METRICS:
            raise ValueError(f"TEST.VOC_METRIC must be one of {VOC_METRICS}, got {self.metric!r}")
        self.reset()

    def reset(self) -> None:
        self._predictions: List[dict] = []  # {"image_id", "boxes", "scores", "classes"} as numpy arrays

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            self._predictions.append({"image_id": inp["image_id"], **{
                k: out[k].detach().cpu().numpy() for k in ("boxes", "scores", "classes")}})

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Scores on the images that were processed (all of them after a full inference run)."""
        from detres.utils import comm

        predictions = [p for part in comm.all_gather(self._predictions) for p in part]
        if not comm.is_main_process():
            return {}
        detections = predictions_by_class(predictions, len(self.class_names))
        if self.output_dir:
            write_voc_results(self.output_dir, detections, self.class_names, self.split)
        seen = {p["image_id"] for p in predictions}
        records = [r for r in load_voc_instances(self.dirname, self.split, self.class_names) if r["image_id"] in seen]
        metrics = evaluate_voc(records, detections, self.class_names, self.metric, source=self.dataset_name)
        logger.info("VOC evaluation of %s (%d images):\n%s", self.dataset_name, len(records), format_voc_table(metrics))
        return {"bbox": metrics}


@EVALUATOR_REGISTRY.register()
def voc(cfg, dataset_name: str, output_dir: Optional[str] = None) -> VOCEvaluator:
    """Evaluator type "voc" (``MetadataCatalog.get(name).evaluator_type``)."""
    return VOCEvaluator(cfg, dataset_name, output_dir)
