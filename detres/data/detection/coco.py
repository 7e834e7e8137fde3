"""COCO-format detection datasets through pycocotools.

``load_coco_json`` turns an instances json into records of the catalog's detection format
(see ``detres.data.catalog``): boxes become XYXY absolute pixels, category ids become contiguous
0-based indices in increasing order of the dataset's ids (``contiguous_id_map``; the evaluator
maps back with the same rule). Crowd boxes stay in the records with ``iscrowd=1`` (the mapper
passes them separately as ``crowd_boxes``). Boxes that extend outside their image are clipped;
boxes with zero or negative width/height (after clipping) or non-finite coordinates are dropped;
both counts are logged and kept in the metadata as ``box_stats``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from pycocotools.coco import COCO

from detres.data.catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "load_coco_api",
    "contiguous_id_map",
    "sanitize_box",
    "load_coco_json",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)


def load_coco_api(json_file: str) -> COCO:
    """A pycocotools ``COCO`` object for ``json_file``, with errors that name the file."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    try:
        with open(json_file) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not a valid json file: {e}") from e
    missing = [k for k in ("images", "annotations", "categories") if k not in dataset]
    if not isinstance(dataset, dict) or missing:
        raise ValueError(f"{json_file}: not a COCO instances file (missing keys: {missing})")
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def contiguous_id_map(coco: COCO) -> Tuple[Dict[int, int], List[str]]:
    """``({dataset category id: contiguous index}, class names in index order)``; ids sorted ascending."""
    cat_ids = sorted(coco.getCatIds())
    names = [coco.cats[i]["name"] for i in cat_ids]
    return {cat_id: index for index, cat_id in enumerate(cat_ids)}, names


def sanitize_box(xywh: Sequence[float], width: int, height: int) -> Tuple[Optional[List[float]], str]:
    """Clip a COCO ``[x, y, w, h]`` box to the image; returns ``(xyxy or None, status)``.

    status is "ok", "clipped" (it extended outside the image) or "dropped" (non-finite, or zero or
    negative width/height after clipping, e.g. entirely outside the image).
    """
    if len(xywh) != 4 or not all(math.isfinite(float(v)) for v in xywh):
        return None, "dropped"
    x, y, w, h = (float(v) for v in xywh)
    box = [x, y, x + w, y + h]
    clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
               min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
    if clipped[2] - clipped[0] <= 0 or clipped[3] - clipped[1] <= 0:
        return None, "dropped"
    return clipped, ("ok" if clipped == box else "clipped")


def load_coco_json(json_file: str, image_root: str, dataset_name: Optional[str] = None) -> List[dict]:
    """Records (one per image, in increasing image id, images without boxes included).

    When ``dataset_name`` is given its metadata gains ``thing_classes``,
    ``thing_dataset_id_to_contiguous_id`` and ``box_stats`` ({"clipped", "dropped", "crowd"}).
    """
    coco = load_coco_api(json_file)
    id_map, names = contiguous_id_map(coco)
    stats = {"clipped": 0, "dropped": 0, "crowd": 0}
    records = []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        width, height = int(info["width"]), int(info["height"])
        annotations = []
        for ann in coco.imgToAnns.get(image_id, []):
            if ann["category_id"] not in id_map:
                raise ValueError(
                    f"{json_file}: annotation {ann.get('id')} of image {image_id} has category_id "
                    f"{ann['category_id']}, which is not among the file's categories"
                )
            box, status = sanitize_box(ann["bbox"], width, height)
            if status != "ok":
                stats[status] += 1
            if box is None:
                continue
            iscrowd = int(ann.get("iscrowd", 0))
            stats["crowd"] += iscrowd
            annotations.append({"bbox": box, "category_id": id_map[ann["category_id"]], "iscrowd": iscrowd})
        records.append({
            "file_name": os.path.join(image_root, info["file_name"]),
            "image_id": image_id,
            "height": height,
            "width": width,
            "annotations": annotations,
        })
    num_boxes = sum(len(r["annotations"]) for r in records)
    logger.info(
        "Loaded %d images with %d boxes (%d crowd) in %d categories from %s; clipped %d boxes extending "
        "outside their image, dropped %d degenerate boxes (zero/negative size or outside the image).",
        len(records), num_boxes, stats["crowd"], len(names), json_file, stats["clipped"], stats["dropped"],
    )
    if dataset_name is not None:
        MetadataCatalog.set(
            dataset_name, thing_classes=names, thing_dataset_id_to_contiguous_id=id_map, box_stats=stats
        )
    return records


def register_coco_instances(
    name: str, json_file: str, image_root: str, missing_hint: str = "",
    prepare: Optional[Callable[[], object]] = None, **metadata
) -> None:
    """Register a COCO-format dataset lazily: the json is read on ``DatasetCatalog.get(name)``.

    ``prepare`` (e.g. generating a synthetic dataset) runs first; ``missing_hint`` is appended to the
    error raised when the json or the image folder is absent. Extra ``metadata`` (e.g. ``thing_classes``
    known in advance) is stored as given.
    """
    def check() -> None:
        if prepare is not None:
            prepare()
        for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
            if not os.path.exists(path):
                raise FileNotFoundError(f"dataset {name!r}: {what} not found: {path}. {missing_hint}".strip())

    def load() -> List[dict]:
        check()
        return load_coco_json(json_file, image_root, dataset_name=name)

    DatasetCatalog.register(name, load, check)
    MetadataCatalog.set(
        name, json_file=json_file, image_root=image_root, task="detection", evaluator_type="coco", **metadata
    )
