"""Localization datasets: the two ILSVRC CLS-LOC layouts give identical records, their errors and
counted skips, image sizes from headers, the generated set and the registered names."""
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detres.config import get_cfg
from detres.data.build import DatasetFormatError, check_datasets, register_from_config
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.classification.datasets import DatasetLayoutError
from detres.data.detection.mapper import ImageReadError
from detres.data.localization import image_size
from detres.data.localization.formats import write_solution_csv, write_synset_mapping
from detres.data.localization.ilsvrc import annotation_folder, image_folder, load_ilsvrc_loc, solution_csv
from detres.data.localization.synthetic import (
    SyntheticLocSpec,
    ensure_synthetic_loc,
    generate_synthetic_loc,
    synthetic_loc_classes,
)

WNIDS = ["n01000001", "n02000002", "n03000003"]
DESCRIPTIONS = ["tench, Tinca tinca", "goldfish", "great white shark, white shark, man-eater"]
# (split, image_id, folder wnid or None, (height, width), [(wnid, box), ...]); an empty list: no boxes
IMAGES = [
    ("train", "n01000001_1", "n01000001", (30, 40), [("n01000001", [2, 3, 20, 25])]),
    ("train", "n01000001_2", "n01000001", (36, 30), [("n01000001", [0, 0, 29, 35]), ("n02000002", [5, 5, 9, 9])]),
    ("train", "n01000001_3", "n01000001", (30, 30), []),
    ("train", "n02000002_7", "n02000002", (32, 48), [("n02000002", [10, 4, 47, 31])]),
    ("train", "n03000003_4", "n03000003", (40, 40), []),
    ("val", "ILSVRC2012_val_00000001", None, (30, 50), [("n03000003", [1, 1, 40, 28]), ("n03000003", [3, 2, 8, 9])]),
    ("val", "ILSVRC2012_val_00000002", None, (44, 33), [("n01000001", [0, 10, 32, 43])]),
]


@pytest.fixture(autouse=True)
def _size_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))


def _xml(size, boxes) -> str:
    objects = "".join(
        f"  <object>\n    <name>{wnid}</name>\n    <bndbox>\n      <xmin>{b[0]}</xmin>\n      <ymin>{b[1]}</ymin>\n"
        f"      <xmax>{b[2]}</xmax>\n      <ymax>{b[3]}</ymax>\n    </bndbox>\n  </object>\n" for wnid, b in boxes)
    return (f"<annotation>\n  <size>\n    <width>{size[1]}</width>\n    <height>{size[0]}</height>\n"
            f"    <depth>3</depth>\n  </size>\n{objects}</annotation>\n")


def make_ilsvrc(root: Path, images=IMAGES, layouts=("csv", "xml")) -> Path:
    """A CLS-LOC tree with the images of ``images`` and their annotations in ``layouts``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    write_synset_mapping(root / "LOC_synset_mapping.txt", WNIDS, DESCRIPTIONS)
    for split in ("train", "val"):
        rows = []
        for s, image_id, wnid, size, boxes in images:
            if s != split:
                continue
            sub = f"{wnid}/" if wnid else ""
            path = image_folder(root, split) / f"{sub}{image_id}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))
            if boxes or split == "val":
                rows.append((image_id, boxes))
            if "xml" in layouts and boxes:
                xml = annotation_folder(root, split) / f"{sub}{image_id}.xml"
                xml.parent.mkdir(parents=True, exist_ok=True)
                xml.write_text(_xml(size, boxes))
        if "csv" in layouts:
            write_solution_csv(solution_csv(root, split), rows)
    return root


def _expected_records(split):
    index = {w: i for i, w in enumerate(WNIDS)}
    out = []
    for s, image_id, wnid, size, boxes in sorted(IMAGES, key=lambda x: x[1]):
        if s != split or not boxes:
            continue
        anns = [{"bbox": [float(v) for v in b], "category_id": index[w]} for w, b in boxes]
        label = index[wnid] if wnid else index[boxes[0][0]]
        out.append({"image_id": image_id, "height": size[0], "width": size[1], "label": label, "annotations": anns})
    return out


# ---------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("split", ["train", "val"])
def test_both_layouts_give_identical_records(tmp_path, split):
    root = make_ilsvrc(tmp_path)
    by_csv = load_ilsvrc_loc(root, split, "csv")
    by_xml = load_ilsvrc_loc(root, split, "xml")
    assert by_csv == by_xml == load_ilsvrc_loc(root, split, "auto")
    assert [{k: v for k, v in r.items() if k != "file_name"} for r in by_csv] == _expected_records(split)
    assert all(Path(r["file_name"]).is_file() and Path(r["file_name"]).stem == r["image_id"] for r in by_csv)


def test_auto_layout_reads_xml_without_csv_and_classes_without_mapping(tmp_path):
    root = make_ilsvrc(tmp_path, layouts=("xml",))
    (root / "LOC_synset_mapping.txt").unlink()
    records = load_ilsvrc_loc(root, "train")  # classes from the sorted train folders
    assert [r["image_id"] for r in records] == ["n01000001_1", "n01000001_2", "n02000002_7"]
    assert [r["label"] for r in records] == [0, 0, 1]


def test_registered_imagenet_loc_datasets_log_the_box_count(tmp_path, monkeypatch, caplog):
    make_ilsvrc(tmp_path / "ilsvrc")
    monkeypatch.setenv("DETRES_DATASETS", str(tmp_path))
    register_from_config(get_cfg())
    with caplog.at_level(logging.INFO, logger="detres.data.localization"):
        train = DatasetCatalog.get("imagenet_loc_train")
    assert len(train) == 3
    assert "imagenet_loc_train: 3 of 5 training images have boxes (4 boxes)" in caplog.text
    meta = MetadataCatalog.get("imagenet_loc_train")
    assert (meta.task, meta.evaluator_type, meta.thing_classes) == ("localization", "localization", WNIDS)
    assert meta.class_descriptions == DESCRIPTIONS and meta.root == str(tmp_path / "ilsvrc")
    assert [r["label"] for r in DatasetCatalog.get("imagenet_loc_val")] == [2, 0]


def test_missing_dataset_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRES_DATASETS", str(tmp_path))
    cfg = get_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("imagenet_loc_train",), ("imagenet_loc_val",)
    with pytest.raises(DatasetLayoutError, match=r"ilsvrc/ILSVRC/Data/CLS-LOC/train not found; see the 'ImageNet"):
        check_datasets(cfg)
    with pytest.raises(DatasetLayoutError, match=r"image folder not found: .*CLS-LOC/val \(expected"):
        load_ilsvrc_loc(tmp_path, "val")


def test_missing_annotations_and_image_files(tmp_path):
    root = make_ilsvrc(tmp_path, layouts=("csv",))
    with pytest.raises(DatasetLayoutError,
                       match=r"annotation folder not found: .*Annotations/CLS-LOC/val .*<ImageId>\.xml"):
        load_ilsvrc_loc(root, "val", "xml")
    (image_folder(root, "train") / "n02000002" / "n02000002_7.JPEG").unlink()
    with pytest.raises(DatasetLayoutError, match=r"LOC_train_solution\.csv line 4: annotated image 'n02000002_7' has "
                                                 r"no image file: expected .*train/n02000002/n02000002_7\.JPEG"):
        load_ilsvrc_loc(root, "train")


# ---------------------------------------------------------------------------- errors and skips
def _csv_with(root: Path, row: str, split: str = "val") -> Path:
    path = solution_csv(root, split)
    path.write_text(path.read_text() + row + "\n")
    return path


@pytest.mark.parametrize("row, message", [
    ("ILSVRC2012_val_00000003,n01000001 1 2 3", r"line 4: PredictionString must repeat 'wnid x1 y1 x2 y2' .* got 4"),
    ("ILSVRC2012_val_00000003,n01000001 1 2 3 4,extra", r"line 4: expected 'ImageId,PredictionString', got 3"),
    ("ILSVRC2012_val_00000003,n01000001 1 two 3 4", r"line 4: coordinate 'two' is not a finite number"),
    ("ILSVRC2012_val_00000003,n09999999 1 2 3 4", r"line 4: unknown wnid 'n09999999'"),
    ("ILSVRC2012_val_00000001,n01000001 1 2 3 4", r"line 4: ImageId 'ILSVRC2012_val_00000001' repeats line 2"),
])
def test_malformed_csv_rows_are_errors_naming_file_and_line(tmp_path, row, message):
    root = make_ilsvrc(tmp_path, layouts=("csv",))
    _csv_with(root, row)
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution\.csv " + message):
        load_ilsvrc_loc(root, "val")


def test_csv_header_and_unsorted_mapping(tmp_path):
    root = make_ilsvrc(tmp_path, layouts=("csv",))
    path = solution_csv(root, "val")
    path.write_text(path.read_text().replace("ImageId,PredictionString", "id,boxes"))
    with pytest.raises(DatasetFormatError, match=r"LOC_val_solution\.csv line 1: the header must be"):
        load_ilsvrc_loc(root, "val")
    (root / "LOC_synset_mapping.txt").write_text("n02 b\nn01 a\n")
    with pytest.raises(DatasetFormatError, match=r"LOC_synset_mapping\.txt line 2: 'n01' does not come after 'n02'"):
        load_ilsvrc_loc(root, "val")


@pytest.mark.parametrize("edit, message", [
    (("<name>n03000003</name>\n    <bndbox>\n      <xmin>3", "<name>n07</name>\n    <bndbox>\n      <xmin>3"),
     r"val/ILSVRC2012_val_00000001\.xml line 16 \(object 1\): unknown wnid 'n07'"),
    (("<ymax>28</ymax>", "<ymax>2x8</ymax>"),
     r"00000001\.xml line 7 \(object 0\): <ymax> '2x8' is not a finite number"),
    (("bndbox", "box", 2), r"00000001\.xml line 7 \(object 0\): lacks <bndbox>"),
    (("<height>30</height>", ""), r"00000001\.xml line 2 \(<size>\): lacks <height>"),
    (("</annotation>", ""), r"00000001\.xml line \d+: not valid XML"),
])
def test_malformed_xml_is_an_error_naming_file_and_line(tmp_path, edit, message):
    root = make_ilsvrc(tmp_path, layouts=("xml",))
    xml = annotation_folder(root, "val") / "ILSVRC2012_val_00000001.xml"
    xml.write_text(xml.read_text().replace(*edit) if len(edit) == 3 else xml.read_text().replace(*edit, 1))
    with pytest.raises(DatasetFormatError, match=message):
        load_ilsvrc_loc(root, "val")


def test_val_image_with_boxes_of_two_classes_is_an_error(tmp_path):
    root = make_ilsvrc(tmp_path, layouts=("csv",))
    path = solution_csv(root, "val")
    path.write_text(path.read_text().replace("n01000001 0 10 32 43", "n01000001 0 10 32 43 n02000002 1 1 5 5"))
    with pytest.raises(DatasetFormatError, match=r"line 3: validation image 'ILSVRC2012_val_00000002' has boxes of 2"):
        load_ilsvrc_loc(root, "val")


def test_bad_boxes_are_counted_skips_with_one_warning_per_file(tmp_path, caplog):
    images = list(IMAGES[:4]) + [
        ("train", "n02000002_8", "n02000002", (30, 40), [
            ("n02000002", [30, 5, 10, 20]),       # x2 < x1: skipped
            ("n02000002", [-0.5, 2, 40.8, 30]),   # overshoot <= 1 pixel: clipped
            ("n02000002", [5, 5, 20, 33])]),      # 3 pixels below the image: skipped
        ("train", "n02000002_9", "n02000002", (30, 40), [("n02000002", [-5, 0, 10, 10])]),  # its only box: skipped
    ]
    root = make_ilsvrc(tmp_path, images=images)
    csv_first = r"LOC_train_solution\.csv \(first: line 5: x2 < x1 or y2 < y1 in box \[30, 5, 10, 20\]\)"
    for layout, first in (("csv", csv_first),
                          ("xml", r"CLS-LOC/train \(first: .*n02000002_8\.xml line 7 \(object 0\): x2 < x1")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="detres.data.localization"):
            records = {r["image_id"]: r for r in load_ilsvrc_loc(root, "train", layout, name="t")}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and warnings[0].startswith("skipped 3 boxes in ")
        assert re.search(first, warnings[0]), warnings[0]
        assert records["n02000002_8"]["annotations"] == [{"bbox": [0.0, 2.0, 40.0, 30.0], "category_id": 1}]
        assert "n02000002_9" not in records  # left without boxes
        assert "t: 4 of 6 training images have boxes (5 boxes)" in caplog.text
        assert "clipped 1 boxes" in caplog.text


def test_val_rows_without_boxes_are_left_out_with_a_warning(tmp_path, caplog):
    root = make_ilsvrc(tmp_path, layouts=("csv",))
    path = solution_csv(root, "val")
    path.write_text(path.read_text().replace("n01000001 0 10 32 43", ""))  # an empty PredictionString
    with caplog.at_level(logging.WARNING, logger="detres.data.localization"):
        records = load_ilsvrc_loc(root, "val", name="v")
    assert [r["image_id"] for r in records] == ["ILSVRC2012_val_00000001"]
    assert "v: left out 1 validation images without boxes (no label), e.g. ILSVRC2012_val_00000002" in caplog.text


# ---------------------------------------------------------------------------- image sizes
def test_image_size_from_header_follows_exif_orientation_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(image_size, "DISK_CACHE_MIN_IMAGES", 1)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: cv2 decodes it as 40 x 24
    Image.new("RGB", (40, 24), (200, 10, 10)).save(path, exif=exif)
    assert image_size.read_image_size(str(path)) == cv2.imread(str(path)).shape[:2] == (40, 24)
    assert image_size.read_image_sizes([str(path)], str(tmp_path)) == [(40, 24)]
    assert len(list((tmp_path / "cache" / "image_sizes").glob("*.json"))) == 1
    read_image_size = image_size.read_image_size
    monkeypatch.setattr(image_size, "read_image_size", lambda p: pytest.fail("size read again"))
    image_size._MEMORY.clear()
    assert image_size.read_image_sizes([str(path)], str(tmp_path)) == [(40, 24)]  # from the disk cache
    Image.new("RGB", (10, 12)).save(path)
    monkeypatch.setattr(image_size, "read_image_size", read_image_size)
    assert image_size.read_image_sizes([str(path)], str(tmp_path)) == [(12, 10)]  # a changed file is read again
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=r"bad\.jpg: cannot read the image size"):
        image_size.read_image_sizes([str(tmp_path / "bad.jpg")], str(tmp_path))


# ---------------------------------------------------------------------------- generated set
SMALL = SyntheticLocSpec(num_train=24, num_val=8, num_classes=4, image_size=(64, 96), seed=3)


def _files(folder: Path):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_generated_set_is_deterministic_and_seed_dependent(tmp_path):
    a = _files(generate_synthetic_loc(tmp_path / "a", SMALL))
    assert a == _files(generate_synthetic_loc(tmp_path / "b", SMALL))
    assert len(a) == 24 + 8 + 4  # images, mapping, two solution files, spec.json
    other = _files(generate_synthetic_loc(tmp_path / "c", SyntheticLocSpec(24, 8, 4, (64, 96), seed=4)))
    first_val = "ILSVRC/Data/CLS-LOC/val/synthetic_val_00000001.JPEG"
    assert other[first_val] != a[first_val]


def test_generated_set_counts_classes_and_boxes(tmp_path):
    root = generate_synthetic_loc(tmp_path, SMALL)
    train, val = load_ilsvrc_loc(root, "train", "csv"), load_ilsvrc_loc(root, "val", "csv")
    assert (len(train), len(val)) == (24, 8)
    assert sorted(r["label"] for r in train) == sorted(i % 4 for i in range(24))
    assert [r["label"] for r in val] == [i % 4 for i in range(8)]
    wnids, descriptions = synthetic_loc_classes(4)
    assert wnids == ["n00000000", "n00000001", "n00000002", "n00000003"]
    assert descriptions[1] == "solid square, hue 90 degrees"
    sides = []
    for r in train + val:
        (ann,) = r["annotations"]
        x1, y1, x2, y2 = ann["bbox"]
        assert ann["category_id"] == r["label"] and 64 <= r["height"] <= 96 and 64 <= r["width"] <= 96
        assert 0 <= x1 < x2 <= r["width"] - 1 and 0 <= y1 < y2 <= r["height"] - 1
        sides.append(max(x2 - x1 + 1, y2 - y1 + 1) / min(r["height"], r["width"]))
        # the box is tight around the pixels of the class's hue (clutter has other hues)
        hsv = cv2.cvtColor(cv2.imread(r["file_name"]), cv2.COLOR_BGR2HSV).astype(int)
        hue = round(180 * r["label"] / 4) % 180
        close = np.minimum(abs(hsv[..., 0] - hue), 180 - abs(hsv[..., 0] - hue)) < 8
        mask = close & (hsv[..., 1] > 130) & (hsv[..., 2] > 120)  # solid classes (k < 8): light shades only
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
        bx, by, bw, bh, _ = stats[1 + np.argmax(stats[1:, 4])]
        assert np.allclose([bx, by, bx + bw - 1, by + bh - 1], [x1, y1, x2, y2], atol=2), r["image_id"]
    assert min(sides) < 0.45 and max(sides) > 0.7
    assert len({(r["height"], r["width"]) for r in train}) > 12


def test_generated_on_first_use_and_registered_for_both_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRES_DATASETS", str(tmp_path))
    cfg = get_cfg()
    cfg.DATASETS.SYNTHETIC_LOC.NUM_TRAIN, cfg.DATASETS.SYNTHETIC_LOC.NUM_VAL = 10, 5
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("synthetic_loc_train", "synthetic_loc_cls_train"), ("synthetic_loc_val",)
    check_datasets(cfg)  # generates
    (folder,) = (tmp_path / "generated").glob("synthetic_loc_*")
    spec = SyntheticLocSpec(10, 5, 8, (96, 160), 0)
    assert folder == ensure_synthetic_loc(tmp_path / "generated", spec) and folder.name == f"synthetic_loc_{spec.key()}"
    loc, cls = DatasetCatalog.get("synthetic_loc_train"), DatasetCatalog.get("synthetic_loc_cls_train")
    assert [{"file_name": r["file_name"], "label": r["label"]} for r in loc] == cls and len(cls) == 10
    for name, task in (("synthetic_loc_val", "localization"), ("synthetic_loc_cls_val", "classification")):
        meta = MetadataCatalog.get(name)
        assert (meta.task, meta.evaluator_type, meta.thing_classes) == (task, task, synthetic_loc_classes(8)[0])
    assert len(DatasetCatalog.get("synthetic_loc_cls_val")) == 5
