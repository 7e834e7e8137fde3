"""PASCAL VOC datasets: the XML parser (difficult / truncated / several objects), the 1-based pixel
coordinates and back, the registrations under DATASETS.ROOT (difficult objects left out of training
by default) and one-line errors naming the file."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

from detres.config import get_cfg
from detres.data.build import DatasetFormatError, register_from_config
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.detection.voc import (
    VOC_CLASSES,
    detres_to_voc_box,
    load_voc_instances,
    parse_voc_xml,
    voc_to_detres_box,
)

# (name, [xmin, ymin, xmax, ymax] 1-based pixel-inclusive, difficult (None: no tag), truncated)
Obj = tuple
# 000005: 500 x 375, a truncated dog, a difficult person, a chair without a <difficult> tag.
# 000007: 353 x 500, one car. 000009: 500 x 375, no objects.
IMAGES: Dict[str, tuple] = {
    "000005": ((500, 375), [("dog", [48, 240, 195, 371], 0, 1), ("person", [8, 12, 352, 498], 1, 0),
                            ("chair", [263, 211, 324, 339], None, 0)]),
    "000007": ((353, 500), [("car", [141, 50, 500, 330], 0, 0)]),
    "000009": ((500, 375), []),
}


def voc_xml(size: Sequence[int], objects: List[Obj]) -> str:
    """The text of a VOC annotation file; ``size`` is (width, height)."""
    parts = [f"<annotation><folder>VOC2007</folder><size><width>{size[0]}</width><height>{size[1]}</height>"
             "<depth>3</depth></size>"]
    for name, box, difficult, truncated in objects:
        tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>{truncated}</truncated>{tag}<bndbox>"
                     + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
                     + "</bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def write_voc_devkit(root: Path, year: int = 2007, images: Optional[Dict[str, tuple]] = None,
                     splits: Optional[Dict[str, List[str]]] = None) -> Path:
    """``<root>/VOCdevkit/VOC<year>`` with Annotations/ and ImageSets/Main/ (no JPEGs); returns the year folder."""
    images = IMAGES if images is None else images
    splits = {"test": list(images)} if splits is None else splits
    folder = root / "VOCdevkit" / f"VOC{year}"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, (size, objects) in images.items():
        (folder / "Annotations" / f"{image_id}.xml").write_text(voc_xml(size, objects))
    for split, ids in splits.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def test_classes_in_the_standard_order():
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[:5] == ("aeroplane", "bicycle", "bird", "boat", "bottle")
    assert VOC_CLASSES.index("person") == 14 and VOC_CLASSES[-1] == "tvmonitor"


def test_coordinates_to_detres_and_back_exactly():
    assert voc_to_detres_box([48, 240, 195, 371]) == [47.0, 239.0, 195.0, 371.0]
    assert detres_to_voc_box([47.0, 239.0, 195.0, 371.0]) == [48.0, 240.0, 195.0, 371.0]
    # a one-pixel VOC box (xmin == xmax) is one pixel wide in detres
    x1, y1, x2, y2 = voc_to_detres_box([1, 1, 1, 1])
    assert (x2 - x1, y2 - y1) == (1.0, 1.0)
    for box in ([1, 1, 500, 375], [263.5, 211, 324, 339.25]):
        assert detres_to_voc_box(voc_to_detres_box(box)) == box


def test_parser_records(tmp_path):
    folder = write_voc_devkit(tmp_path, splits={"test": ["000005", "000007", "000009"]})
    records = load_voc_instances(str(folder), "test")
    assert [r["image_id"] for r in records] == ["000005", "000007", "000009"]  # split-file order
    first = records[0]
    assert first["file_name"] == str(folder / "JPEGImages" / "000005.jpg")
    assert (first["height"], first["width"]) == (375, 500)
    assert first["annotations"] == [
        {"bbox": [47.0, 239.0, 195.0, 371.0], "category_id": 11, "iscrowd": 0, "difficult": False},  # truncated dog
        {"bbox": [7.0, 11.0, 352.0, 498.0], "category_id": 14, "iscrowd": 0, "difficult": True},
        {"bbox": [262.0, 210.0, 324.0, 339.0], "category_id": 8, "iscrowd": 0, "difficult": False},  # no tag: 0
    ]
    assert (records[1]["height"], records[1]["width"]) == (500, 353)
    assert records[1]["annotations"][0]["category_id"] == 6
    assert records[2]["annotations"] == []
    without = load_voc_instances(str(folder), "test", keep_difficult=False)
    assert [a["category_id"] for a in without[0]["annotations"]] == [11, 8]


@pytest.mark.parametrize("text, message", [
    ("<annotation><size><width>5", r"000005\.xml: not a valid XML file"),
    (voc_xml((5, 5), [("kitten", [1, 1, 2, 2], 0, 0)]), r"000005\.xml: object 0 has the class 'kitten'"),
    (voc_xml((5, 5), [("cat", [1, 1, 2, 2], 0, 0), ("dog", [4, 1, 2, 2], 0, 0)]),
     r"000005\.xml: object 1 \(dog\): inverted box"),
    (voc_xml((5, 5), [("cat", [1, "a", 2, 2], 0, 0)]), r"000005\.xml: object 0 \(cat\): <ymin> is not a number"),
    (voc_xml((5, 5), [("cat", [1, 1, 2, 2], 2, 0)]), r"<difficult> must be 0 or 1, got '2'"),
    ("<annotation><object><name>cat</name></object></annotation>", r"000005\.xml lacks <size>"),
    ("<annotation><size><width>5</width><height>5</height></size><object><name>cat</name></object></annotation>",
     r"000005\.xml: object 0 \(cat\) lacks <bndbox>"),
], ids=["truncated-xml", "unknown-class", "inverted-box", "not-a-number", "bad-difficult", "no-size", "no-bndbox"])
def test_malformed_xml_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "000005.xml"
    path.write_text(text)
    with pytest.raises(DatasetFormatError, match=message) as err:
        parse_voc_xml(str(path))
    assert "\n" not in str(err.value)


def test_missing_files_are_named(tmp_path):
    folder = write_voc_devkit(tmp_path, splits={"test": ["000005", "000404"]})
    with pytest.raises(FileNotFoundError, match=r"Annotations/000404\.xml"):
        load_voc_instances(str(folder), "test")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt"):
        load_voc_instances(str(folder), "val")


def _cfg(root: Path, keep_difficult: bool = False):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(root)
    cfg.DATASETS.VOC.KEEP_DIFFICULT = keep_difficult
    return cfg


def test_registrations_under_the_dataset_root(tmp_path):
    folder = write_voc_devkit(tmp_path, splits={"trainval": ["000005", "000007"], "test": ["000009"]})
    register_from_config(_cfg(tmp_path))
    names = DatasetCatalog.names()
    for year, splits in ((2007, ("train", "val", "trainval", "test")), (2012, ("train", "val", "trainval"))):
        for split in splits:
            assert f"voc_{year}_{split}" in names
    assert "voc_2012_test" not in names  # no public annotations
    for name in ("coco_2014_train", "coco_2014_val", "coco_2014_minival", "coco_2014_valminusminival",
                 "coco_2017_test-dev"):
        assert name in names
    assert MetadataCatalog.get("coco_2014_minival").json_file == str(
        tmp_path / "coco" / "annotations" / "instances_minival2014.json")
    assert MetadataCatalog.get("coco_2014_minival").image_root == str(tmp_path / "coco" / "val2014")
    assert MetadataCatalog.get("coco_2017_test-dev").json_file.endswith("image_info_test-dev2017.json")

    meta = MetadataCatalog.get("voc_2007_trainval")
    assert (meta.task, meta.evaluator_type, meta.split, meta.year) == ("detection", "voc", "trainval", 2007)
    assert meta.dirname == str(folder) and meta.thing_classes == list(VOC_CLASSES)
    # training records leave the difficult person out by default ...
    records = DatasetCatalog.get("voc_2007_trainval")
    assert [[a["category_id"] for a in r["annotations"]] for r in records] == [[11, 8], [6]]
    # ... and keep it, flagged, with DATASETS.VOC.KEEP_DIFFICULT (registering again replaces the entry)
    register_from_config(_cfg(tmp_path, keep_difficult=True))
    records = DatasetCatalog.get("voc_2007_trainval")
    assert [a["difficult"] for a in records[0]["annotations"]] == [False, True, False]


def test_missing_devkit_points_to_the_readme(tmp_path):
    register_from_config(_cfg(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"voc_2012_train.*ImageSets/Main/train\.txt.*datasets/README\.md"):
        DatasetCatalog.check("voc_2012_train")
