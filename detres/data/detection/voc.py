"""PASCAL VOC detection datasets in the VOCdevkit layout.

::

    <dirname>/                         e.g. VOCdevkit/VOC2007
      Annotations/<image id>.xml
      JPEGImages/<image id>.jpg
      ImageSets/Main/<split>.txt       one image id a line (train, val, trainval, test)

``load_voc_instances`` turns a split into records of the catalog's detection format (see
``detres.data.catalog``), in the order of the split file. ``image_id`` is the VOC id string (e.g.
``"000005"``, ``"2008_000002"``; the ids of VOC2007 and VOC2012 do not collide).

Coordinates: VOC boxes are 1-based and pixel-inclusive (``xmin..xmax`` covers ``xmax - xmin + 1``
pixels); detres boxes are continuous XYXY (pixel ``i`` spans ``[i, i + 1)``). VOC ``[x1, y1, x2, y2]``
is therefore detres ``[x1 - 1, y1 - 1, x2, y2]``, and back exactly (``voc_to_detres_box`` /
``detres_to_voc_box``). A detres box's width ``x2 - x1`` is the devkit's ``xmax - xmin + 1``, so the
devkit's IoU (with its "+1" widths and heights) is the plain continuous IoU of detres boxes.

Each annotation: ``bbox``, ``category_id`` (index in ``VOC_CLASSES``), ``iscrowd`` 0 and
``difficult`` (bool; a missing ``<difficult>`` is 0). Truncated and occluded objects are ordinary
objects. With ``keep_difficult=False`` the difficult objects are left out of the records (what the
registered datasets give training by default, ``DATASETS.VOC.KEEP_DIFFICULT``); the VOC evaluator
always reads them, to ignore them.

Errors name the file: a missing split file, annotation file or folder is a ``FileNotFoundError``; an
XML file that does not parse, lacks ``size`` or an object's ``name`` / ``bndbox``, has a non-numeric
or inverted box (``xmin > xmax``), or names a class outside ``class_names`` is a ``DatasetFormatError``.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import List, Sequence

from detres.data.build import DatasetFormatError
from detres.data.catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "VOC_CLASSES",
    "voc_to_detres_box",
    "detres_to_voc_box",
    "read_split",
    "parse_voc_xml",
    "load_voc_instances",
    "register_voc_instances",
]

# The 20 classes in the devkit's order (category_id = index).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def voc_to_detres_box(box: Sequence[float]) -> List[float]:
    """VOC 1-based pixel-inclusive ``[x1, y1, x2, y2]`` -> detres continuous XYXY ``[x1 - 1, y1 - 1, x2, y2]``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 - 1.0, y1 - 1.0, x2, y2]


def detres_to_voc_box(box: Sequence[float]) -> List[float]:
    """detres continuous XYXY -> VOC 1-based pixel-inclusive ``[x1 + 1, y1 + 1, x2, y2]`` (inverse of the above)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 + 1.0, y1 + 1.0, x2, y2]


def read_split(dirname: str, split: str) -> List[str]:
    """The image ids of ``<dirname>/ImageSets/Main/<split>.txt`` (first word of each non-empty line)."""
    path = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VOC split file not found: {path}")
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def _text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetFormatError(f"{where} lacks <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise DatasetFormatError(f"{where}: <{tag}> is not a number: {text!r}") from None


def _parse_object(obj: ET.Element, where: str, class_index: dict) -> dict:
    name = _text(obj, "name", where)
    if name not in class_index:
        raise DatasetFormatError(f"{where} has the class {name!r}, which is not among {list(class_index)}")
    where = f"{where} ({name})"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DatasetFormatError(f"{where} lacks <bndbox>")
    box = [_number(bndbox, tag, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
    if box[0] > box[2] or box[1] > box[3]:
        raise DatasetFormatError(f"{where}: inverted box (xmin, ymin, xmax, ymax) = {box}")
    difficult = obj.find("difficult")
    flag = difficult.text.strip() if difficult is not None and difficult.text else "0"
    if flag not in ("0", "1"):
        raise DatasetFormatError(f"{where}: <difficult> must be 0 or 1, got {flag!r}")
    return {"bbox": voc_to_detres_box(box), "category_id": class_index[name], "iscrowd": 0, "difficult": flag == "1"}


def parse_voc_xml(xml_file: str, class_names: Sequence[str] = VOC_CLASSES) -> dict:
    """``{"height", "width", "annotations"}`` of one annotation file (every object, difficult ones flagged)."""
    if not os.path.isfile(xml_file):
        raise FileNotFoundError(f"VOC annotation file not found: {xml_file}")
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as e:
        raise DatasetFormatError(f"{xml_file}: not a valid XML file: {e}") from None
    size = root.find("size")
    if size is None:
        raise DatasetFormatError(f"{xml_file} lacks <size>")
    width, height = (_number(size, tag, f"{xml_file}: <size>") for tag in ("width", "height"))
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DatasetFormatError(f"{xml_file}: <size> must be positive integers, got {width} x {height}")
    class_index = {name: i for i, name in enumerate(class_names)}
    annotations = [_parse_object(obj, f"{xml_file}: object {i}", class_index)
                   for i, obj in enumerate(root.findall("object"))]
    return {"height": int(height), "width": int(width), "annotations": annotations}


def load_voc_instances(dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES,
                       keep_difficult: bool = True) -> List[dict]:
    """Records of ``<dirname>``'s ``split`` (see the module docstring); difficult objects are flagged,
    and left out when not ``keep_difficult``."""
    records = []
    for image_id in read_split(dirname, split):
        parsed = parse_voc_xml(os.path.join(dirname, "Annotations", f"{image_id}.xml"), class_names)
        if not keep_difficult:
            parsed["annotations"] = [a for a in parsed["annotations"] if not a["difficult"]]
        records.append({"file_name": os.path.join(dirname, "JPEGImages", f"{image_id}.jpg"), "image_id": image_id,
                        **parsed})
    return records


def register_voc_instances(name: str, dirname: str, split: str, year: int, keep_difficult: bool = False,
                           missing_hint: str = "") -> None:
    """Register ``<dirname>``'s ``split`` lazily as ``name`` (files are read on ``DatasetCatalog.get``).

    Metadata: ``thing_classes`` (``VOC_CLASSES``), ``task="detection"``, ``evaluator_type="voc"``,
    ``dirname``, ``split``, ``year``, ``keep_difficult``. ``missing_hint`` is appended to the error
    raised when the split file is absent.
    """
    def check() -> None:
        split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"dataset {name!r}: split file not found: {split_file}. {missing_hint}".strip())

    def load() -> List[dict]:
        check()
        return load_voc_instances(dirname, split, keep_difficult=keep_difficult)

    DatasetCatalog.register(name, load, check)
    MetadataCatalog.set(name, thing_classes=list(VOC_CLASSES), task="detection", evaluator_type="voc",
                        dirname=dirname, split=split, year=year, keep_difficult=keep_difficult)
