"""ILSVRC CLS-LOC (ImageNet localization) in its two layouts, parsed to identical catalog records.

Layout under ``root`` (the registered datasets use ``<dataset root>/ilsvrc``)::

    ILSVRC/Data/CLS-LOC/train/<wnid>/<ImageId>.JPEG   images, both layouts (any IMAGE_EXTENSIONS)
    ILSVRC/Data/CLS-LOC/val/<ImageId>.JPEG
    LOC_synset_mapping.txt                            "<wnid> <description>" lines, sorted by wnid
    xml (official): ILSVRC/Annotations/CLS-LOC/train/<wnid>/<ImageId>.xml
                    ILSVRC/Annotations/CLS-LOC/val/<ImageId>.xml   (VOC-style: size/width, size/height,
                    object/name = wnid, object/bndbox/xmin, ymin, xmax, ymax)
    csv (Kaggle):   LOC_train_solution.csv, LOC_val_solution.csv   (header "ImageId,PredictionString";
                    PredictionString repeats "wnid x1 y1 x2 y2" for every box of the image)

Layout "auto" reads a split from its ``LOC_<split>_solution.csv`` when that exists, else from the XML
files. Classes (``thing_classes``) are the wnids of ``LOC_synset_mapping.txt`` (class index = line
order, which must be sorted, as ImageNet classifiers number the classes), or without that file the
sorted ``train/<wnid>`` folders. Image sizes come from the XML ``<size>``; the CSV layout reads them
from the image headers (:mod:`.image_size`, cached).

Records (sorted by ``image_id``; see :mod:`detres.data.localization`): ``{"file_name", "image_id",
"height", "width", "label", "annotations": [{"bbox": [x1, y1, x2, y2], "category_id"}, ...]}``, boxes
XYXY absolute pixels exactly as in the files (ILSVRC's pixel-inclusive numbers), objects in file order.
train: only the images with at least one box; ``label`` = class of the image's folder (all its boxes
are kept, whatever their class). val: ``label`` = the class of its boxes.

Bad input:

* an error naming the path: a missing image / annotation folder, class list or solution file, or an
  annotated image without its image file (``DatasetLayoutError``);
* an error naming the file and line (``DatasetFormatError``): XML that does not parse or lacks
  ``size`` / ``name`` / ``bndbox``, a wrong CSV header, a CSV row without exactly two fields, a
  PredictionString whose field count is not a multiple of 5, a non-numeric or non-finite coordinate,
  an unknown wnid, a repeated ImageId, an unsorted synset mapping, a validation image whose boxes
  have several classes (its label is ambiguous) -- the file itself is broken;
* a counted skip, ONE warning per annotation file (CSV) or folder (XML) "skipped N boxes in FILE
  (first: line L: reason)": a box with x2 < x1 or y2 < y1, or reaching more than 1 pixel outside
  ``[0, width] x [0, height]`` -- single bad boxes, as real annotation sets have; overshoots of at
  most 1 pixel are clipped (counted in an INFO line). An image left without boxes (e.g. an empty
  PredictionString) is a training image without boxes; a validation image without boxes has no
  label and is left out (one warning with the count).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from detres.data.build import DatasetFormatError
from detres.data.classification.datasets import IMAGE_EXTENSIONS, DatasetLayoutError
from detres.data.localization.formats import (
    SYNSET_MAPPING,
    Boxes,
    check_box,
    parse_loc_xml,
    parse_solution_csv,
    read_synset_mapping,
    xml_object_where,
)
from detres.data.localization.image_size import read_image_sizes

__all__ = [
    "LAYOUTS",
    "annotation_folder",
    "detect_layout",
    "ilsvrc_classes",
    "image_folder",
    "load_ilsvrc_loc",
    "solution_csv",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "csv", "xml")
SPLITS = ("train", "val")
# image_id -> (height, width, annotations, where the image's boxes are written)
Annotated = Dict[str, Tuple[int, int, List[dict], str]]


def image_folder(root: os.PathLike, split: str) -> Path:
    return Path(root) / "ILSVRC" / "Data" / "CLS-LOC" / split


def annotation_folder(root: os.PathLike, split: str) -> Path:
    return Path(root) / "ILSVRC" / "Annotations" / "CLS-LOC" / split


def solution_csv(root: os.PathLike, split: str) -> Path:
    return Path(root) / f"LOC_{split}_solution.csv"


def _subfolders(folder: Path) -> List[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def ilsvrc_classes(root: os.PathLike) -> Tuple[List[str], List[str]]:
    """``(wnids, descriptions)``: from ``LOC_synset_mapping.txt``, else the sorted train class folders."""
    mapping, train = Path(root) / SYNSET_MAPPING, image_folder(root, "train")
    if mapping.is_file():
        return read_synset_mapping(mapping)
    wnids = _subfolders(train) if train.is_dir() else []
    if not wnids:
        raise DatasetLayoutError(
            f"{root}: no class list: expected {mapping} ('<wnid> <description>' lines) or class folders "
            f"{train}/<wnid>/ (see datasets/README.md)")
    return wnids, list(wnids)


def detect_layout(root: os.PathLike, split: str, layout: str = "auto") -> str:
    """"csv" or "xml": ``layout`` itself, or for "auto" "csv" when ``LOC_<split>_solution.csv`` exists."""
    if layout not in LAYOUTS:
        raise ValueError(f"DATASETS.LOC_LAYOUT must be one of {LAYOUTS}, got {layout!r}")
    if layout != "auto":
        return layout
    return "csv" if solution_csv(root, split).is_file() else "xml"


class _Skips:
    """Counts the boxes skipped and clipped while reading ``source``; :meth:`report` logs one summary."""

    def __init__(self, source: str) -> None:
        self.source, self.skipped, self.clipped, self.first = source, 0, 0, ""

    def clean(self, boxes: Boxes, height: int, width: int, where: Callable[[int], str]) -> List[dict]:
        """The annotations of the boxes that pass :func:`check_box`; ``where(k)`` locates box ``k``."""
        annotations = []
        for k, (category, box) in enumerate(boxes):
            checked, status = check_box(box, height, width)
            if checked is None:
                self.skipped += 1
                self.first = self.first or f"{where(k)}: {status}"
                continue
            self.clipped += status == "clipped"
            annotations.append({"bbox": checked, "category_id": category})
        return annotations

    def report(self) -> None:
        if self.skipped:
            logger.warning("skipped %d boxes in %s (first: %s)", self.skipped, self.source, self.first)
        if self.clipped:
            logger.info("clipped %d boxes reaching at most 1 pixel outside their image in %s",
                        self.clipped, self.source)


# ---------------------------------------------------------------------------- loading
def _scan_images(folder: Path, split: str, class_index: Dict[str, int]) -> Dict[str, Tuple[str, int]]:
    """``{image_id: (file path, class index of its folder; -1 for val)}`` of the images in ``folder``."""
    found: Dict[str, Tuple[str, int]] = {}
    subfolders = [(folder / w, w) for w in _subfolders(folder)] if split == "train" else [(folder, "")]
    if not subfolders:
        raise DatasetLayoutError(f"{folder}: no class folders (expected {folder}/<wnid>/<ImageId>.JPEG)")
    for sub, wnid in subfolders:
        if split == "train" and wnid not in class_index:
            raise DatasetFormatError(f"{sub}: class folder {wnid!r} is not in the class list ({SYNSET_MAPPING})")
        with os.scandir(sub) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                    continue
                if stem in found:
                    raise DatasetFormatError(f"two images have the ImageId {stem!r}: {found[stem][0]} and {entry.path}")
                found[stem] = (entry.path, class_index[wnid] if wnid else -1)
    return found


def _missing_image(where: str, image_id: str, folder: Path, split: str) -> DatasetLayoutError:
    expected = folder / (f"{image_id.split('_')[0]}/{image_id}" if split == "train" else image_id)
    return DatasetLayoutError(f"{where}: annotated image {image_id!r} has no image file: expected {expected}.JPEG")


def _csv_annotations(root: Path, split: str, images: Dict[str, Tuple[str, int]],
                     class_index: Dict[str, int]) -> Tuple[Annotated, _Skips]:
    path, folder = solution_csv(root, split), image_folder(root, split)
    rows = parse_solution_csv(path, class_index)
    for image_id, (line, _) in rows.items():
        if image_id not in images:
            raise _missing_image(f"{path} line {line}", image_id, folder, split)
    ids = sorted(rows)
    sizes = read_image_sizes([images[i][0] for i in ids], str(folder))
    skips, annotated = _Skips(str(path)), {}
    for image_id, (height, width) in zip(ids, sizes):
        line, boxes = rows[image_id]
        annotations = skips.clean(boxes, height, width, lambda k: f"line {line}")
        annotated[image_id] = (height, width, annotations, f"{path} line {line}")
    return annotated, skips


def _xml_annotations(root: Path, split: str, images: Dict[str, Tuple[str, int]],
                     class_index: Dict[str, int]) -> Tuple[Annotated, _Skips]:
    ann_folder = annotation_folder(root, split)
    if not ann_folder.is_dir():
        raise DatasetLayoutError(
            f"annotation folder not found: {ann_folder} (expected {ann_folder}/{'<wnid>/' if split == 'train' else ''}"
            f"<ImageId>.xml, or for the CSV layout {solution_csv(root, split)})")
    subfolders = [ann_folder / w for w in _subfolders(ann_folder)] if split == "train" else [ann_folder]
    skips, annotated = _Skips(str(ann_folder)), {}
    for sub in subfolders:
        for xml_file in sorted(p for p in sub.iterdir() if p.suffix == ".xml"):
            if xml_file.stem not in images:
                raise _missing_image(str(xml_file), xml_file.stem, image_folder(root, split), split)
            height, width, boxes = parse_loc_xml(xml_file, class_index)
            annotations = skips.clean(boxes, height, width, lambda k: xml_object_where(xml_file, k))
            annotated[xml_file.stem] = (height, width, annotations, str(xml_file))
    return annotated, skips


def _val_label(annotations: List[dict], image_id: str, where: str) -> int:
    classes = sorted({a["category_id"] for a in annotations})
    if len(classes) > 1:
        raise DatasetFormatError(f"{where}: validation image {image_id!r} has boxes of {len(classes)} classes "
                                 f"(class indices {classes}); its label is the class of its boxes")
    return classes[0]


def load_ilsvrc_loc(root: os.PathLike, split: str, layout: str = "auto", name: Optional[str] = None) -> List[dict]:
    """The records of ``split`` ("train" | "val") of the CLS-LOC folder ``root`` in ``layout``
    ("auto" | "csv" | "xml"); ``name`` (the dataset's) labels the log lines. See the module docstring."""
    if split not in SPLITS:
        raise ValueError(f"ILSVRC CLS-LOC split must be one of {SPLITS}, got {split!r}")
    root, name = Path(root), name or f"ILSVRC CLS-LOC {split}"
    folder = image_folder(root, split)
    if not folder.is_dir():
        what = "<wnid>/<ImageId>.JPEG" if split == "train" else "<ImageId>.JPEG"
        raise DatasetLayoutError(f"{name}: image folder not found: {folder} (expected {folder}/{what}; "
                                 "see datasets/README.md)")
    class_index = {wnid: i for i, wnid in enumerate(ilsvrc_classes(root)[0])}
    images = _scan_images(folder, split, class_index)
    read = _csv_annotations if detect_layout(root, split, layout) == "csv" else _xml_annotations
    annotated, skips = read(root, split, images, class_index)
    skips.report()
    records = []
    for image_id in sorted(annotated):
        height, width, annotations, where = annotated[image_id]
        if not annotations:
            continue
        file_name, label = images[image_id]
        label = _val_label(annotations, image_id, where) if split == "val" else label
        records.append({"file_name": file_name, "image_id": image_id, "height": height, "width": width,
                        "label": label, "annotations": annotations})
    num_boxes = sum(len(r["annotations"]) for r in records)
    if split == "train":
        logger.info("%s: %d of %d training images have boxes (%d boxes)", name, len(records), len(images), num_boxes)
        return records
    unlabelled = len(images) - len(records)
    if unlabelled:
        example = min(set(images) - {r["image_id"] for r in records})
        logger.warning("%s: left out %d validation images without boxes (no label), e.g. %s", name, unlabelled, example)
    logger.info("%s: %d validation images (%d boxes)", name, len(records), num_boxes)
    return records

