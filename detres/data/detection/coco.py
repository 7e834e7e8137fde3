"""COCO-format detection datasets through pycocotools.

``load_coco_json`` turns an instances json into records of the catalog's detection format
(see ``detres.data.catalog``): boxes become XYXY absolute pixels, category ids become contiguous
0-based indices in increasing order of the dataset's ids (``contiguous_id_map``; the evaluator
maps back with the same rule). Crowd boxes stay in the records with ``iscrowd=1`` (the mapper
passes them separately as ``crowd_boxes``). Boxes that extend outside their image are clipped;
boxes with zero or negative width/height (after clipping) or non-finite coordinates are dropped;
both counts are logged and kept in the metadata as ``box_stats``.

``load_coco_api`` (used by training and evaluation alike) checks the file before pycocotools indexes it:

* errors (``DatasetFormatError`` naming the file and the record, e.g. ``ann.json: annotations[3]
  (id 12): ...``): a file that is not UTF-8 json (or is truncated) or lacks ``images`` or
  ``categories`` (an image-info file without ``annotations``, e.g. test-dev's, gives records without
  boxes); a record that is not an object or misses a required field
  (images: ``id``, ``file_name``, ``height``, ``width``; annotations: ``id``, ``image_id``,
  ``category_id``, ``bbox``; categories: ``id``, ``name``); ids that are not integers, or repeated
  within their list; a size that is not a positive integer; a ``bbox`` that is not 4 numbers; an
  ``iscrowd`` other than 0/1; a ``category_id`` not among the categories. These mean the file is
  broken or belongs to another dataset, so going on would train on the wrong data.
* counted skip (one warning with the count and an example): annotations whose ``image_id`` is not
  among the images: nothing can be learnt from them, and the other records are intact.

A missing ``area`` (which COCO evaluation needs) is filled with the box's ``w * h``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pycocotools.coco import COCO

from detres.data.build import DatasetFormatError
from detres.data.catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "load_coco_api",
    "contiguous_id_map",
    "sanitize_box",
    "load_coco_json",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)


def _read_json(json_file: str) -> Any:
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    with open(json_file, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # json is UTF-8; tolerate a byte order mark
    except UnicodeDecodeError as e:
        raise DatasetFormatError(
            f"{json_file}: not a valid json file: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        ends_early = " (the file ends early: truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise DatasetFormatError(f"{json_file}: not a valid json file: {e}{ends_early}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_records(json_file: str, section: str, records: Any, fields: Sequence[str]) -> Dict[int, int]:
    """``{id: index}`` of the list ``section``, after checking each record is an object with ``fields``
    and a unique integer id."""
    if not isinstance(records, list):
        raise DatasetFormatError(f"{json_file}: {section!r} must be a list, got {type(records).__name__}")
    index_of: Dict[int, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetFormatError(f"{json_file}: {section}[{index}] is not an object: {record!r:.80}")
        where = f"{json_file}: {section}[{index}] (id {record.get('id')!r})"
        missing = [k for k in fields if k not in record]
        if missing:
            raise DatasetFormatError(f"{where} lacks the required fields {missing}")
        if not _is_int(record["id"]):
            raise DatasetFormatError(f"{where}: the id must be an integer")
        if record["id"] in index_of:
            raise DatasetFormatError(f"{where}: the id is repeated (first at {section}[{index_of[record['id']]}])")
        index_of[record["id"]] = index
    return index_of


def _check_image(where: str, image: dict) -> None:
    if not (_is_int(image["height"]) and _is_int(image["width"]) and image["height"] > 0 and image["width"] > 0):
        raise DatasetFormatError(f"{where}: height and width must be positive integers, got "
                                 f"{image['height']!r} and {image['width']!r}")
    if not isinstance(image["file_name"], str):
        raise DatasetFormatError(f"{where}: file_name must be a string, got {image['file_name']!r}")


def _check_annotation(where: str, ann: dict, category_ids: Dict[int, int]) -> None:
    bbox = ann["bbox"]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise DatasetFormatError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r:.80}")
    if ann.get("iscrowd", 0) not in (0, 1):
        raise DatasetFormatError(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
    if not _is_int(ann["category_id"]) or ann["category_id"] not in category_ids:
        raise DatasetFormatError(f"{where} of image {ann['image_id']!r} has category_id {ann['category_id']!r}, "
                                 "which is not among the file's categories")


def _check_dataset(json_file: str, dataset: Any) -> None:
    """Raise ``DatasetFormatError`` for the errors of the module docstring; drop (and count) the
    annotations of unknown images; fill a missing ``area``."""
    if not isinstance(dataset, dict):
        raise DatasetFormatError(f"{json_file}: not a COCO instances file (its top level is a "
                                 f"{type(dataset).__name__}, not an object)")
    missing = [k for k in ("images", "categories") if k not in dataset]
    if missing:
        raise DatasetFormatError(f"{json_file}: not a COCO instances file (missing keys: {missing})")
    dataset.setdefault("annotations", [])  # an image-info file (e.g. test-dev's) lists no annotations
    image_ids = _check_records(json_file, "images", dataset["images"], ("id", "file_name", "height", "width"))
    for image_id, index in image_ids.items():
        _check_image(f"{json_file}: images[{index}] (id {image_id})", dataset["images"][index])
    category_ids = _check_records(json_file, "categories", dataset["categories"], ("id", "name"))
    _check_records(json_file, "annotations", dataset["annotations"], ("id", "image_id", "category_id", "bbox"))
    orphans = []  # indices of the annotations of unknown images
    for index, ann in enumerate(dataset["annotations"]):
        _check_annotation(f"{json_file}: annotations[{index}] (id {ann['id']})", ann, category_ids)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        if not _is_int(ann["image_id"]) or ann["image_id"] not in image_ids:
            orphans.append(index)
    if orphans:
        first = dataset["annotations"][orphans[0]]
        logger.warning("%s: skipped %d annotations whose image_id is not among the images, e.g. annotations[%d] "
                       "(id %s) with image_id %r", json_file, len(orphans), orphans[0], first["id"], first["image_id"])
        skip = set(orphans)
        dataset["annotations"] = [a for i, a in enumerate(dataset["annotations"]) if i not in skip]


def load_coco_api(json_file: str) -> COCO:
    """A pycocotools ``COCO`` object for ``json_file``, checked as the module docstring says; errors
    name the file and the record."""
    dataset = _read_json(json_file)
    _check_dataset(json_file, dataset)
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
    """Clip a COCO ``[x, y, w, h]`` box (4 numbers) to the image; returns ``(xyxy or None, status)``.

    status is "ok", "clipped" (it extended outside the image) or "dropped" (non-finite, or zero or
    negative width/height after clipping, e.g. entirely outside the image).
    """
    if not all(math.isfinite(float(v)) for v in xywh):
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
