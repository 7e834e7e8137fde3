"""ImageNet localization (ILSVRC CLS-LOC) errors, as in "Deep Residual Learning", Appendix C.

Boxes are XYXY absolute pixels of the ORIGINAL image, in the ILSVRC files' pixel-inclusive convention:
a box ``[x1, y1, x2, y2]`` covers ``(x2 - x1 + 1) * (y2 - y1 + 1)`` pixels, and IoU counts the
intersection the same way (the devkit's "+1"; the whole image is ``[0, 0, width - 1, height - 1]``).

Per image the ground truth is a list of ``(class, box)`` (every box of the image) and a submission an
ordered list of ``(class, box)`` guesses, best first; classes are any hashable (0-based indices in the
evaluator, WordNet ids in the CSV files). Only the first ``MAX_GUESSES`` (5) guesses count. Metrics,
in percent of the ground-truth images (an image without guesses is wrong for each of them):

* ``top1_cls_error`` / ``top5_cls_error``: no class of the first 1 / 5 guesses is a ground-truth class;
* ``top1_loc_error`` / ``top5_loc_error``: no guess of the first 1 / 5 has a ground-truth class and
  IoU >= 0.5 with a ground-truth box of that class (IoU exactly 0.5 counts as right);
* ``gt_loc_error``: the one box given for the ground-truth class (an oracle classifier) fails that test;
* ``baseline_<loc metric>`` (when image sizes are known): the same with every box replaced by the
  whole image, the trivial localizer to compare with.

Files (Kaggle "ImageNet Object Localization Challenge" form), header ``ImageId,PredictionString``:
a solution (``LOC_val_solution.csv``) has per row every box ``wnid x1 y1 x2 y2`` of the image; a
submission up to five guesses ``wnid x1 y1 x2 y2 ...`` (coordinates may be floats; written as
integers rounded half up); a GT-class submission one ``wnid x1 y1 x2 y2`` per row. A wnid that is not
a ground-truth class of the image is simply a wrong class.

``LocalizationEvaluator`` (evaluator type "localization") scores a model's per-image outputs
``{"pred_classes" (k,) int64, "pred_boxes" (k, 4), "scores" (k,), "gt_class_box" (4,)}`` (k <= 5,
best first, boxes in original image pixels) against the dataset's records and writes
``loc_submission.csv`` and ``loc_gt_class_submission.csv`` (boxes rounded) into its output folder.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Collection, Dict, Hashable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.localization.formats import CsvMessages, read_csv_rows, write_solution_csv
from detres.evaluation.build import EVALUATOR_REGISTRY
from detres.utils import comm
from detres.utils.file_io import make_dirs

__all__ = [
    "LOC_METRICS",
    "MAX_GUESSES",
    "IOU_THRESHOLD",
    "inclusive_iou",
    "localization_errors",
    "format_localization_table",
    "read_solution",
    "read_submission",
    "read_gt_class_submission",
    "write_submission",
    "LocalizationEvaluator",
]

logger = logging.getLogger(__name__)

LOC_METRICS = ("top1_cls_error", "top5_cls_error", "gt_loc_error", "top1_loc_error", "top5_loc_error")
MAX_GUESSES = 5
IOU_THRESHOLD = 0.5
# the wording of the CSV errors (the files are read by detres.data.localization.formats.read_csv_rows)
_MESSAGES = CsvMessages(
    where="{path}: line {line}",
    header="expected the header {expected!r}, got {got!r:.80}",
    fields="expected 2 comma-separated fields 'ImageId,PredictionString', got {count}: {text!r:.80}",
    duplicate="ImageId {image_id!r} again (first on line {first})",
    groups="expected groups of 5 fields 'wnid x1 y1 x2 y2', got {count} fields",
    not_number="non-numeric box coordinates {tokens!r}",
    not_finite="non-finite box coordinates {tokens!r}",
)

Box = Sequence[float]
Guess = Tuple[Hashable, Box]  # (class, XYXY box); a ground-truth box may be None: a class without a box


def inclusive_iou(box: Box, boxes: Union[np.ndarray, Sequence[Box]]) -> np.ndarray:
    """IoU (M,) of ``box`` (4,) with each of ``boxes`` (M, 4), pixel-inclusive XYXY (widths ``x2 - x1 + 1``).
    A box with x2 < x1 - 1 (or y) has area 0; IoU is 0 where the union is empty."""
    a = np.asarray(box, dtype=np.float64).reshape(4)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = lambda x: np.clip(x[..., 2:] - x[..., :2] + 1, 0, None)  # noqa: E731  (M, 2) inclusive w, h
    inter = np.prod(np.clip(np.minimum(a[2:], b[:, 2:]) - np.maximum(a[:2], b[:, :2]) + 1, 0, None), axis=1)
    union = np.prod(size(a)) + np.prod(size(b), axis=1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _is_hit(truth: Sequence[Guess], guess: Guess) -> bool:
    """Whether ``guess`` has a class of ``truth`` and IoU >= 0.5 with one of that class's boxes."""
    boxes = [b for c, b in truth if c == guess[0] and b is not None]
    return bool(boxes) and bool(inclusive_iou(guess[1], boxes).max() >= IOU_THRESHOLD)


def _whole_image(guesses: Mapping[Hashable, Sequence[Guess]],
                 sizes: Mapping[Hashable, Tuple[int, int]]) -> Dict[Hashable, List[Guess]]:
    """``guesses`` with every box replaced by the whole image ``[0, 0, width - 1, height - 1]``;
    ``sizes`` maps image id -> (height, width)."""
    return {i: [(c, [0.0, 0.0, sizes[i][1] - 1.0, sizes[i][0] - 1.0]) for c, _ in g] for i, g in guesses.items()}


def _percent_wrong(hits: Sequence[bool]) -> float:
    return 100.0 * (1.0 - sum(hits) / len(hits))


def _loc_hits(truth: Mapping[Hashable, Sequence[Guess]], guesses: Mapping[Hashable, Sequence[Guess]],
              k: int) -> List[bool]:
    """Per ground-truth image: whether one of its first ``k`` guesses is right (class and IoU >= 0.5)."""
    return [any(_is_hit(t, g) for g in guesses.get(i, ())[:k]) for i, t in truth.items()]


def _errors(truth: Mapping[Hashable, Sequence[Guess]], guesses: Optional[Mapping[Hashable, Sequence[Guess]]],
            gt_boxes: Optional[Mapping[Hashable, Sequence[Guess]]]) -> "OrderedDict[str, float]":
    """The metrics of the module docstring that ``guesses`` (at most five per image) and ``gt_boxes`` (one
    guess per image) allow; images missing from either are wrong."""
    metrics = OrderedDict()
    if guesses is not None:
        classes = {i: {c for c, _ in t} for i, t in truth.items()}
        for k in (1, MAX_GUESSES):
            metrics[f"top{k}_cls_error"] = _percent_wrong(
                [any(c in classes[i] for c, _ in guesses.get(i, ())[:k]) for i in truth])
    if gt_boxes is not None:
        metrics["gt_loc_error"] = _percent_wrong(_loc_hits(truth, gt_boxes, 1))
    if guesses is not None:
        for k in (1, MAX_GUESSES):
            metrics[f"top{k}_loc_error"] = _percent_wrong(_loc_hits(truth, guesses, k))
    return metrics


def localization_errors(ground_truth: Mapping[Hashable, Sequence[Guess]],
                        guesses: Optional[Mapping[Hashable, Sequence[Guess]]] = None,
                        gt_class_boxes: Optional[Mapping[Hashable, Guess]] = None,
                        image_sizes: Optional[Mapping[Hashable, Tuple[int, int]]] = None,
                        source: str = "predictions") -> "OrderedDict[str, Union[float, int]]":
    """The ILSVRC metrics (percent) of the module docstring over the images of ``ground_truth``
    (image id -> its ``(class, box)`` pairs; a box ``None`` gives the image a class without a box).

    ``guesses``: image id -> ordered ``(class, box)`` guesses (without it only ``gt_loc_error``);
    ``gt_class_boxes``: image id -> the one ``(class, box)`` for the ground-truth class (without it no
    ``gt_loc_error``); ``image_sizes``: image id -> ``(height, width)``, adds the whole-image baseline.
    Guesses after the fifth are ignored with one warning. ``num_images`` ends the results.
    Raises ``ValueError`` naming ``source`` for image ids that are not in the ground truth.
    """
    if not ground_truth:
        raise ValueError(f"{source}: the ground truth has no images")
    if guesses is None and gt_class_boxes is None:
        raise ValueError(f"{source}: neither guesses nor ground-truth-class boxes to evaluate")
    for what, given in (("guesses", guesses), ("ground-truth-class boxes", gt_class_boxes)):
        unknown = sorted(map(str, set(given or ()) - set(ground_truth)))
        if unknown:
            raise ValueError(f"{source}: {what} for {len(unknown)} image ids not in the ground truth, e.g. "
                             f"{unknown[:5]} (a submission for another split?)")
    if guesses is not None:
        too_many = sum(len(g) > MAX_GUESSES for g in guesses.values())
        if too_many:
            logger.warning("%s: %d images have more than %d guesses; only the first %d count", source, too_many,
                           MAX_GUESSES, MAX_GUESSES)
        guesses = {i: list(g)[:MAX_GUESSES] for i, g in guesses.items()}
    gt_lists = None if gt_class_boxes is None else {i: [g] for i, g in gt_class_boxes.items()}
    metrics = _errors(ground_truth, guesses, gt_lists)
    if image_sizes is not None:
        whole = lambda g: None if g is None else _whole_image(g, image_sizes)  # noqa: E731
        baseline = _errors(ground_truth, whole(guesses), whole(gt_lists))
        metrics.update((f"baseline_{k}", v) for k, v in baseline.items() if "_loc_" in k)
    metrics["num_images"] = len(ground_truth)
    return metrics


def format_localization_table(metrics: Mapping[str, float]) -> str:
    """One row per metric: its error and, when present, the whole-image baseline's (percent)."""
    rows = [f"{'metric':<16} {'error %':>8} {'whole-image baseline %':>23}"]
    for name in LOC_METRICS:
        if name in metrics:
            baseline = metrics.get(f"baseline_{name}")
            rows.append(f"{name:<16} {metrics[name]:8.2f} " + (f"{baseline:23.2f}" if baseline is not None else ""))
    rows.append(f"({metrics['num_images']} images)")
    return "\n".join(row.rstrip() for row in rows)


def _read_rows(path: str, kind: str,
               known_ids: Optional[Collection[str]]) -> Iterator[Tuple[str, str, List[Guess]]]:
    """``("<path>: line <n>", ImageId, [(wnid, [x1, y1, x2, y2]), ...])`` per row of an
    ``ImageId,PredictionString`` file; a ``ValueError`` naming ``path`` and the line for a missing header,
    a malformed row, a duplicate ImageId or (with ``known_ids``) an ImageId not in the ground truth
    (see :func:`detres.data.localization.formats.read_csv_rows`)."""
    for line, image_id, boxes in read_csv_rows(path, kind, _MESSAGES, known_ids):
        yield _MESSAGES.where.format(path=path, line=line), image_id, boxes


def read_solution(path: str) -> Dict[str, List[Guess]]:
    """A solution CSV (``LOC_val_solution.csv``): ImageId -> every ``(wnid, box)`` of the image, in file
    order. A row without boxes is an error (the image's class would be unknown)."""
    solution: Dict[str, List[Guess]] = {}
    for where, image_id, boxes in _read_rows(path, "solution", None):
        if not boxes:
            raise ValueError(f"{where}: ImageId {image_id!r} has no 'wnid x1 y1 x2 y2' box")
        solution[image_id] = boxes
    if not solution:
        raise ValueError(f"{path}: no rows after the header line")
    return solution


def read_submission(path: str, known_ids: Optional[Collection[str]] = None) -> Dict[str, List[Guess]]:
    """A submission CSV: ImageId -> its ordered ``(wnid, box)`` guesses (all of them; the evaluation
    counts the first five). With ``known_ids`` (the solution's ImageIds) an unknown ImageId is an error."""
    return {image_id: guesses for _, image_id, guesses in _read_rows(path, "submission", known_ids)}


def read_gt_class_submission(path: str, known_ids: Optional[Collection[str]] = None) -> Dict[str, Guess]:
    """A GT-class submission CSV: ImageId -> its one ``(wnid, box)``; a row with more than one box is an
    error, a row without one counts as missing."""
    boxes: Dict[str, Guess] = {}
    for where, image_id, guesses in _read_rows(path, "GT-class submission", known_ids):
        if len(guesses) > 1:
            raise ValueError(f"{where}: ImageId {image_id!r} has {len(guesses)} boxes; a GT-class submission has "
                             "one 'wnid x1 y1 x2 y2' per row")
        boxes.update((image_id, g) for g in guesses)
    return boxes


def write_submission(path: str, guesses: Mapping[str, Sequence[Guess]]) -> None:
    """Write ``guesses`` (ImageId -> ordered ``(wnid, box)``) as a submission CSV (atomically), rows in
    sorted ImageId order, coordinates rounded half up to integers. A GT-class submission is the same
    with one guess per image."""
    write_solution_csv(path, ((image_id, guesses[image_id]) for image_id in sorted(guesses)))


def _ground_truth(records: Sequence[dict], source: str) -> Tuple[Dict[str, List[Guess]], Dict[str, Tuple[int, int]]]:
    """From catalog localization records: image id -> ``(class, box)`` pairs (the label with box
    ``None`` when no box has it) and image id -> ``(height, width)``."""
    truth, sizes = {}, {}
    for r in records:
        try:
            image_id, label, size = str(r["image_id"]), int(r["label"]), (int(r["height"]), int(r["width"]))
            pairs = [(int(a["category_id"]), [float(v) for v in a["bbox"]]) for a in r["annotations"]]
            if any(len(box) != 4 for _, box in pairs):
                raise ValueError("a bbox without 4 numbers")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: record {r.get('image_id', r.get('file_name'))!r} is not a localization "
                             "record (image_id, height, width, label, annotations with bbox [x1, y1, x2, y2] and "
                             f"category_id): {e!r}") from None
        truth[image_id] = pairs + ([(label, None)] if all(c != label for c, _ in pairs) else [])
        sizes[image_id] = size
    return truth, sizes


class LocalizationEvaluator:
    """See the module docstring: ``reset()``, ``process(inputs, outputs)`` (inputs carry ``"image_id"``
    and ``"label"``; outputs one dict per image with ``"pred_classes"``/``"pred_boxes"`` and/or
    ``"gt_class_box"``), ``evaluate() -> {"localization": {metric: %, ..., "num_images": n}}`` over the
    processed images of all processes (main process; others return ``{}``)."""

    def __init__(self, cfg=None, dataset_name: str = "", output_dir: Optional[str] = None) -> None:
        self.dataset_name, self.output_dir = dataset_name, output_dir
        self.class_names = [str(c) for c in getattr(MetadataCatalog.get(dataset_name), "thing_classes", None) or []]
        self._truth, self._sizes = _ground_truth(DatasetCatalog.get(dataset_name), dataset_name)
        if not self.class_names:
            raise ValueError(f"dataset {dataset_name!r} has no thing_classes (wnids) in its metadata")
        self.reset()

    def reset(self) -> None:
        self._predictions: List[dict] = []  # {"image_id", "label", optional "guesses", optional "gt_class_box"}

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Keep one batch: ``inputs[i]`` has ``"image_id"`` and ``"label"``; ``outputs[i]`` has
        ``"pred_classes"`` (k,) with ``"pred_boxes"`` (k, 4) and/or ``"gt_class_box"`` (4,), XYXY in
        original image pixels."""
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            image_id = str(inp["image_id"])
            if image_id not in self._truth:
                raise ValueError(f"{self.dataset_name}: image {image_id!r} is not in the dataset's records")
            if "pred_classes" not in out and "gt_class_box" not in out:
                raise ValueError(f"{self.dataset_name}: the output for image {image_id!r} has neither "
                                 "'pred_classes' and 'pred_boxes' nor 'gt_class_box'")
            p = {"image_id": image_id, "label": int(inp["label"])}
            if "pred_classes" in out:
                boxes = _numpy(out["pred_boxes"]).reshape(-1, 4).tolist()
                p["guesses"] = list(zip(_numpy(out["pred_classes"]).reshape(-1).astype(int).tolist(), boxes))
            if "gt_class_box" in out:
                p["gt_class_box"] = _numpy(out["gt_class_box"]).reshape(4).tolist()
            self._predictions.append(p)

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """The metrics over every process's images; with an ``output_dir`` also the submission files."""
        predictions = {p["image_id"]: p for part in comm.all_gather(self._predictions) for p in part}
        if not comm.is_main_process():
            return {}
        if not predictions:
            raise RuntimeError(f"LocalizationEvaluator on {self.dataset_name!r}: no images were processed")
        guesses = {i: p["guesses"] for i, p in predictions.items() if "guesses" in p}
        gt_boxes = {i: (p["label"], p["gt_class_box"]) for i, p in predictions.items() if "gt_class_box" in p}
        metrics = localization_errors({i: self._truth[i] for i in predictions}, guesses or None, gt_boxes or None,
                                      self._sizes, source=self.dataset_name)
        logger.info("Localization evaluation of %s:\n%s", self.dataset_name, format_localization_table(metrics))
        if self.output_dir:
            make_dirs(self.output_dir)
            for name, rows in (("loc_submission.csv", guesses), ("loc_gt_class_submission.csv",
                                                                 {i: [g] for i, g in gt_boxes.items()})):
                if rows:
                    write_submission(os.path.join(self.output_dir, name), self._named(rows))
                    logger.info("Wrote %s", os.path.join(self.output_dir, name))
        return {"localization": metrics}

    def _named(self, guesses: Mapping[str, Sequence[Guess]]) -> Dict[str, List[Guess]]:
        """``guesses`` with class indices replaced by the dataset's wnids."""
        n = len(self.class_names)
        bad = sorted({c for g in guesses.values() for c, _ in g if not 0 <= c < n})
        if bad:
            raise ValueError(f"{self.dataset_name}: predicted classes outside 0..{n - 1}: {bad[:10]} "
                             "(does the model have the dataset's number of classes?)")
        return {i: [(self.class_names[c], box) for c, box in g] for i, g in guesses.items()}


def _numpy(value) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@EVALUATOR_REGISTRY.register()
def localization(cfg, dataset_name: str, output_dir: Optional[str] = None) -> LocalizationEvaluator:
    """Evaluator type "localization" (``MetadataCatalog.get(name).evaluator_type``)."""
    return LocalizationEvaluator(cfg, dataset_name, output_dir)
