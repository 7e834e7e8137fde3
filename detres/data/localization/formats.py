"""The file formats of ILSVRC CLS-LOC annotations: reading and writing, without the folder layout.

* ``LOC_synset_mapping.txt``: ``<wnid> <description>`` lines (the description may hold spaces and
  commas); class index = line order, which must be sorted by wnid (as ImageNet classifiers number
  the classes).
* ``LOC_{train,val}_solution.csv`` (Kaggle): header ``ImageId,PredictionString``; the string repeats
  ``wnid x1 y1 x2 y2`` (space separated) for every box of the image.
* ``<ImageId>.xml`` (official): VOC-style ``size/width``, ``size/height``, ``object/name`` (wnid),
  ``object/bndbox/{xmin,ymin,xmax,ymax}``.

Coordinates are returned exactly as written (XYXY absolute pixels, ILSVRC's pixel-inclusive numbers).
A file whose structure is broken raises ``DatasetFormatError`` naming the file and line;
:func:`check_box` judges single boxes against their image (see :mod:`.ilsvrc` for what is skipped).

The ``ImageId,PredictionString`` files have one reader, :func:`read_csv_rows`, and one writer,
:func:`write_solution_csv`, shared with :mod:`detres.evaluation.localization_evaluation` (which reads
and writes submissions in the same format, with its own wording of the errors: :class:`CsvMessages`).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Collection, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from detres.data.build import DatasetFormatError
from detres.data.classification.datasets import DatasetLayoutError
from detres.utils.file_io import atomic_write

__all__ = [
    "Boxes",
    "CSV_HEADER",
    "CsvMessages",
    "CsvRow",
    "SYNSET_MAPPING",
    "check_box",
    "parse_loc_xml",
    "parse_solution_csv",
    "read_csv_rows",
    "read_synset_mapping",
    "write_solution_csv",
    "write_synset_mapping",
    "xml_object_where",
]

SYNSET_MAPPING = "LOC_synset_mapping.txt"
CSV_HEADER = "ImageId,PredictionString"
_MAX_OVERSHOOT = 1.0  # pixels a box may reach outside its image and be clipped rather than skipped
Boxes = List[Tuple[int, List[float]]]  # (class index, [x1, y1, x2, y2]) in file order
CsvRow = Tuple[int, str, List[Tuple[str, List[float]]]]  # (line number, ImageId, [(wnid, [x1, y1, x2, y2]), ...])


def read_synset_mapping(path: os.PathLike) -> Tuple[List[str], List[str]]:
    """``(wnids, descriptions)`` of a ``LOC_synset_mapping.txt`` (description = wnid when absent)."""
    wnids: List[str] = []
    descriptions: List[str] = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            wnid, _, description = line.strip().partition(" ")
            if wnids and wnid <= wnids[-1]:
                raise DatasetFormatError(
                    f"{path} line {n}: {wnid!r} does not come after {wnids[-1]!r}; the wnids must be distinct "
                    "and sorted (class index = line order = sorted wnids)")
            wnids.append(wnid)
            descriptions.append(description.strip() or wnid)
    if not wnids:
        raise DatasetFormatError(f"{path}: no classes ('<wnid> <description>' lines)")
    return wnids, descriptions


def _finite(text: Optional[str]) -> Optional[float]:
    """``text`` as a finite float, or None when it is not one."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class CsvMessages:
    """The wording of :func:`read_csv_rows`'s errors: ``str.format`` templates. ``where`` (``{path}``,
    ``{line}``) starts every message about a line; then ``header`` (``{expected}``, ``{got}``),
    ``fields`` (``{count}``, ``{text}``: the stripped line, ``{short}``: its first 80 characters),
    ``duplicate`` (``{image_id}``, ``{first}``: its first line), ``groups`` (``{count}``: the tokens)
    and ``not_number`` / ``not_finite`` (``{token}``: the first bad one, ``{tokens}``: the box's four).
    The defaults are the dataset loader's; the evaluation has its own."""

    where: str = "{path} line {line}"
    header: str = "the header must be {expected!r}, got {got!r}"
    fields: str = "expected 'ImageId,PredictionString', got {count} comma-separated field(s): {short!r}"
    duplicate: str = "ImageId {image_id!r} repeats line {first}"
    groups: str = "PredictionString must repeat 'wnid x1 y1 x2 y2' (5 fields a box), got {count} fields"
    not_number: str = "coordinate {token!r} is not a finite number"
    not_finite: str = "coordinate {token!r} is not a finite number"


@contextlib.contextmanager
def _decoding(path: os.PathLike) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into a ``DatasetFormatError`` naming it."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None


def _number(text: str) -> Optional[float]:
    """``text`` as a float (maybe inf or nan), or None when it is not a number."""
    try:
        return float(text)
    except ValueError:
        return None


def read_csv_rows(path: os.PathLike, kind: str = "solution", messages: CsvMessages = CsvMessages(),
                  known_ids: Optional[Collection[str]] = None) -> Iterator[CsvRow]:
    """``(line number, ImageId, [(wnid, [x1, y1, x2, y2]), ...])`` per non-empty row of an
    ``ImageId,PredictionString`` file (UTF-8, optional BOM; spaces in the header are allowed), boxes
    as written (a row may have none). ``DatasetFormatError`` (a ``ValueError``) naming ``path`` and the
    line, worded by ``messages``, for a wrong header, a row without exactly two comma-separated fields,
    an empty or repeated ImageId, (with ``known_ids``) an ImageId not among them, tokens not in groups
    of five ``wnid x1 y1 x2 y2``, or coordinates that are not finite numbers; also for a file that is
    not UTF-8 or cannot be read. A missing file is a ``FileNotFoundError`` "<kind> file not found"."""
    try:
        f = open(path, encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{kind} file not found: {path}") from None
    except OSError as e:
        raise DatasetFormatError(f"cannot read the {kind} file {path}: {e.strerror or e}") from None

    def error(line: int, template: str, **values) -> DatasetFormatError:
        return DatasetFormatError(f"{messages.where.format(path=path, line=line)}: {template.format(**values)}")

    seen: Dict[str, int] = {}
    with f, _decoding(path):
        header = f.readline().strip()
        if header.replace(" ", "") != CSV_HEADER:
            raise error(1, messages.header, expected=CSV_HEADER, got=header)
        for n, line in enumerate(f, 2):
            text = line.strip()
            if not text:
                continue
            fields = text.split(",")
            if len(fields) != 2:
                raise error(n, messages.fields, count=len(fields), text=text, short=text[:80])
            image_id, tokens = fields[0].strip(), fields[1].split()
            if not image_id:
                raise error(n, "empty ImageId")
            if image_id in seen:
                raise error(n, messages.duplicate, image_id=image_id, first=seen[image_id])
            if known_ids is not None and image_id not in known_ids:
                raise error(n, "ImageId {image_id!r} is not in the ground truth (a file for another split?)",
                            image_id=image_id)
            seen[image_id] = n
            if len(tokens) % 5:
                raise error(n, messages.groups, count=len(tokens))
            boxes = []
            for k in range(0, len(tokens), 5):
                coordinates = tokens[k + 1:k + 5]
                values = [_number(t) for t in coordinates]
                bad = [t for t, v in zip(coordinates, values) if v is None or not math.isfinite(v)]
                if bad:
                    raise error(n, messages.not_number if None in values else messages.not_finite, token=bad[0],
                                tokens=" ".join(coordinates))
                boxes.append((tokens[k], values))
            yield n, image_id, boxes


def parse_solution_csv(path: os.PathLike, class_index: Dict[str, int]) -> Dict[str, Tuple[int, Boxes]]:
    """``{image_id: (line number, [(class index, [x1, y1, x2, y2]), ...])}`` of a ``LOC_*_solution.csv``
    (read by :func:`read_csv_rows`; an unknown wnid is an error too); boxes are not checked against
    their image here."""
    if not os.path.isfile(path):
        raise DatasetLayoutError(f"solution file not found: {path} (expected '{CSV_HEADER}' rows)")
    rows: Dict[str, Tuple[int, Boxes]] = {}
    for line, image_id, boxes in read_csv_rows(path):
        for wnid, _ in boxes:
            if wnid not in class_index:
                raise DatasetFormatError(f"{path} line {line}: unknown wnid {wnid!r} (not in the class list)")
        rows[image_id] = (line, [(class_index[wnid], box) for wnid, box in boxes])
    return rows


def _line_of(path: os.PathLike, tag: str, index: int) -> int:
    """Line number of the ``index``-th ``<tag>`` element of an XML file (0 when not found), for messages."""
    text = Path(path).read_text(errors="replace")
    matches = list(re.finditer(rf"<{tag}[\s>/]", text))
    return text.count("\n", 0, matches[index].start()) + 1 if index < len(matches) else 0


def xml_object_where(path: os.PathLike, index: int) -> str:
    """``"<path> line L (object k)"``: where the ``index``-th ``<object>`` of an XML file is, for messages."""
    return f"{path} line {_line_of(path, 'object', index)} (object {index})"


def _xml_value(node: ET.Element, tag: str, where: Callable[[], str]) -> str:
    child = node.find(tag)
    if child is None or not (child.text or "").strip():
        raise DatasetFormatError(f"{where()}: lacks <{tag}>")
    return child.text.strip()


def _xml_number(node: ET.Element, tag: str, where: Callable[[], str]) -> float:
    text = _xml_value(node, tag, where)
    value = _finite(text)
    if value is None:
        raise DatasetFormatError(f"{where()}: <{tag}> {text!r} is not a finite number")
    return value


def parse_loc_xml(path: os.PathLike, class_index: Dict[str, int]) -> Tuple[int, int, Boxes]:
    """``(height, width, [(class index, [xmin, ymin, xmax, ymax]), ...])`` of one VOC-style XML file;
    malformed files raise (see the module docstring), boxes are not checked against the size here."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetLayoutError(f"annotation file not found: {path}") from None
    except ET.ParseError as e:
        raise DatasetFormatError(f"{path} line {e.position[0]}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise DatasetFormatError(f"{path}: lacks <size> (width, height)")
    size_where = lambda: f"{path} line {_line_of(path, 'size', 0)} (<size>)"  # noqa: E731
    width, height = (_xml_number(size, t, size_where) for t in ("width", "height"))
    if width <= 0 or height <= 0 or not (width.is_integer() and height.is_integer()):
        raise DatasetFormatError(f"{size_where()}: width and height must be positive integers, got {width} x {height}")
    boxes: Boxes = []
    for k, obj in enumerate(root.findall("object")):
        where = lambda k=k: xml_object_where(path, k)  # noqa: E731  (line numbers are looked up on errors only)
        name = _xml_value(obj, "name", where)
        if name not in class_index:
            raise DatasetFormatError(f"{where()}: unknown wnid {name!r} (not in the class list)")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetFormatError(f"{where()}: lacks <bndbox>")
        box = [_xml_number(bndbox, t, where) for t in ("xmin", "ymin", "xmax", "ymax")]
        boxes.append((class_index[name], box))
    return int(height), int(width), boxes


def check_box(box: Sequence[float], height: int, width: int) -> Tuple[Optional[List[float]], str]:
    """``(box, "ok")``, ``(clipped box, "clipped")`` when it reaches at most 1 pixel outside
    ``[0, width] x [0, height]``, or ``(None, reason)`` when x2 < x1, y2 < y1 or it reaches further."""
    x1, y1, x2, y2 = (float(v) for v in box)
    shown = "[" + ", ".join(f"{v:g}" for v in (x1, y1, x2, y2)) + "]"
    if x2 < x1 or y2 < y1:
        return None, f"x2 < x1 or y2 < y1 in box {shown}"
    m = _MAX_OVERSHOOT
    if x1 < -m or y1 < -m or x2 > width + m or y2 > height + m:
        return None, f"box {shown} reaches more than 1 pixel outside the {width}x{height} (WxH) image"
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    return clipped, ("ok" if clipped == [x1, y1, x2, y2] else "clipped")


def write_synset_mapping(path: os.PathLike, wnids: Sequence[str], descriptions: Sequence[str]) -> None:
    """Write a ``LOC_synset_mapping.txt`` ("<wnid> <description>" lines, in the given order)."""
    Path(path).write_text("".join(f"{w} {d}\n" for w, d in zip(wnids, descriptions)), encoding="utf-8")


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def write_solution_csv(path: os.PathLike, rows: Iterable[Tuple[str, Sequence[Tuple[str, Sequence[float]]]]]) -> None:
    """Write an ``ImageId,PredictionString`` file (a ``LOC_*_solution.csv`` or a submission) atomically
    from ``(image_id, [(wnid, [x1, y1, x2, y2]), ...])`` rows, in the given order; coordinates rounded
    half up to integers, as in the ILSVRC files."""
    def write(f: IO[bytes]) -> None:
        f.write(f"{CSV_HEADER}\n".encode())
        for image_id, boxes in rows:
            text = " ".join(f"{wnid} " + " ".join(str(_round_half_up(v)) for v in box) for wnid, box in boxes)
            f.write(f"{image_id},{text}\n".encode())

    atomic_write(os.fspath(path), write)
