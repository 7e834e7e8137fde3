"""Malformed COCO annotation files and images: each is a one-line ``DatasetFormatError`` naming the file
and the record, or a counted skip where training can go on; through ``tools/train_net.py`` (one and two
processes) an error is one line per process and a non-zero exit, never a traceback."""
import copy
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.build import DatasetError, DatasetFormatError
from detres.data.catalog import DatasetCatalog
from detres.data.detection.coco import load_coco_api, load_coco_json, register_coco_instances
from detres.data.detection.loader import build_detection_test_loader, build_detection_train_loader, check_image_sizes
from detres.data.detection.mapper import ImageReadError

_GOOD = {
    "images": [{"id": 7, "file_name": "a.jpg", "height": 32, "width": 48},
               {"id": 8, "file_name": "b.jpg", "height": 32, "width": 48}],
    "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 10], "iscrowd": 0, "area": 100.0},
                    {"id": 2, "image_id": 8, "category_id": 5, "bbox": [4, 4, 8, 8], "iscrowd": 0, "area": 64.0}],
    "categories": [{"id": 5, "name": "thing"}],
}


def _write(tmp_path, edit=None, name="ann.json"):
    data = copy.deepcopy(_GOOD)
    if edit is not None:
        edit(data)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _set(section, index, key, value):
    def edit(data):
        data[section][index][key] = value
    return edit


def _delete(section, index, key):
    def edit(data):
        del data[section][index][key]
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("annotations", 1, "bbox", [1, 2, 3]), r"annotations\[1\] \(id 2\): bbox must be 4 numbers .*\[1, 2, 3\]"),
    (_set("annotations", 0, "bbox", [1, 2, 3, 4, 5]), r"annotations\[0\] \(id 1\): bbox must be 4 numbers"),
    (_set("annotations", 0, "bbox", [1, "2", 3, 4]), r"annotations\[0\] \(id 1\): bbox must be 4 numbers"),
    (_set("annotations", 0, "bbox", None), r"annotations\[0\] \(id 1\): bbox must be 4 numbers .*, got None"),
    (_set("images", 1, "id", "8"), r"images\[1\] \(id '8'\): the id must be an integer"),
    (_set("images", 0, "id", 7.5), r"images\[0\] \(id 7.5\): the id must be an integer"),
    (_set("images", 1, "id", 7), r"images\[1\] \(id 7\): the id is repeated \(first at images\[0\]\)"),
    (_set("annotations", 1, "id", 1), r"annotations\[1\] \(id 1\): the id is repeated"),
    (_set("annotations", 0, "category_id", 99), r"annotations\[0\] \(id 1\) of image 7 has category_id 99, which is not"),
    (_set("annotations", 0, "iscrowd", 2), r"annotations\[0\] \(id 1\): iscrowd must be 0 or 1"),
    (_delete("annotations", 1, "bbox"), r"annotations\[1\] \(id 2\) lacks the required fields \['bbox'\]"),
    (_delete("images", 0, "height"), r"images\[0\] \(id 7\) lacks the required fields \['height'\]"),
    (_set("images", 0, "width", "48"), r"images\[0\] \(id 7\): height and width must be positive integers"),
    (_set("images", 1, "height", 0), r"images\[1\] \(id 8\): height and width must be positive integers"),
    (lambda d: d["categories"].append(5), r"categories\[1\] is not an object: 5"),
    (lambda d: d.update(images={}), r"'images' must be a list, got dict"),
])
def test_malformed_records_name_the_file_and_record(tmp_path, edit, message):
    path = _write(tmp_path, edit)
    for load in (lambda: load_coco_json(path, str(tmp_path)), lambda: load_coco_api(path)):  # training, evaluation
        with pytest.raises(DatasetFormatError, match=r"ann\.json: " + message):
            load()


@pytest.mark.parametrize("content, message", [
    ('{"images": [], "annotations": [], "categories": [{"name": "caf\xe9"}]}'.encode("latin-1"),
     r"ann\.json: not a valid json file: not UTF-8 \(byte 0xe9 at offset 62\)"),
    (json.dumps(_GOOD)[:70].encode(), r"ann\.json: not a valid json file: .*\(the file ends early: truncated\?\)"),
    (b"images: []", r"ann\.json: not a valid json file: Expecting value: line 1 column 1"),
    (b"[1, 2]", r"ann\.json: not a COCO instances file \(its top level is a list"),
])
def test_unreadable_files(tmp_path, content, message):
    (tmp_path / "ann.json").write_bytes(content)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_coco_json(str(tmp_path / "ann.json"), str(tmp_path))
    assert "\n" not in str(info.value)


def test_annotations_of_unknown_images_are_a_counted_skip(tmp_path, caplog):
    def edit(data):
        data["annotations"] += [dict(data["annotations"][0], id=3, image_id=99), dict(data["annotations"][0], id=4, image_id="7")]
        del data["annotations"][0]["area"]
    path = _write(tmp_path, edit)
    with caplog.at_level(logging.WARNING, logger="detres.data.detection.coco"):
        records = load_coco_json(path, str(tmp_path))
    assert [len(r["annotations"]) for r in records] == [1, 1]
    assert "ann.json: skipped 2 annotations whose image_id is not among the images, e.g. annotations[2] (id 3) " \
           "with image_id 99" in caplog.text
    coco = load_coco_api(path)  # the evaluator sees the same annotations, with the missing area filled in
    assert sorted(coco.anns) == [1, 2] and coco.anns[1]["area"] == 100.0


def _cfg(**input_keys):
    cfg = get_cfg()
    cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 0, 2, 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = (32,), 64, 32, 64
    for key, value in input_keys.items():
        cfg.INPUT[key] = value
    return cfg


@pytest.fixture
def tiny(tmp_path):
    """A registered dataset of a.jpg and b.jpg (32x48) and a third image annotated as 10000x10000."""
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((32, 48, 3), 90, np.uint8))

    def edit(data):
        data["images"].append({"id": 9, "file_name": "huge.jpg", "height": 10000, "width": 10000})
        data["annotations"].append({"id": 3, "image_id": 9, "category_id": 5, "bbox": [0, 0, 500, 500]})
    DatasetCatalog.remove("tiny_malformed")
    register_coco_instances("tiny_malformed", _write(tmp_path, edit), str(tmp_path))
    yield "tiny_malformed"
    DatasetCatalog.remove("tiny_malformed")


def test_oversized_images_skipped_in_training_and_an_error_in_testing(tiny, caplog):
    # huge.jpg does not even exist: the size limit comes from the annotation, before anything is decoded
    with caplog.at_level(logging.WARNING, logger="detres.data.detection.loader"):
        batches = [next(iter(build_detection_train_loader(_cfg(), [tiny])))]
    assert {x["image_id"] for x in batches[0]} <= {7, 8}
    assert "Skipped 1 training images over INPUT.MAX_IMAGE_PIXELS, e.g. image 9" in caplog.text
    assert "huge.jpg) is 10000x10000 (HxW), over INPUT.MAX_IMAGE_PIXELS=50000000" in caplog.text
    with pytest.raises(DatasetFormatError, match=r"image 9 \(.*huge\.jpg\) is 10000x10000 .*raise INPUT.MAX_IMAGE_PIXELS"):
        build_detection_test_loader(_cfg(), tiny)
    # with the limit raised the record goes to the mapper, which finds the file missing
    with pytest.raises(ImageReadError, match="huge.jpg"):
        list(build_detection_test_loader(_cfg(MAX_IMAGE_PIXELS=0), tiny))
    records = [{"image_id": i, "file_name": f"{i}.jpg", "height": h, "width": w}
               for i, (h, w) in enumerate([(100, 100), (101, 100)])]
    assert check_image_sizes(records, 10_000, is_train=True) == records[:1]


def test_corrupt_training_image_is_a_counted_skip_warned_once(tiny, tmp_path, caplog):
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cfg = _cfg()  # huge.jpg is over the limit: only a.jpg and b.jpg are drawn
    with caplog.at_level(logging.WARNING, logger="detres.data.detection.loader"):
        loader = build_detection_train_loader(cfg, [tiny])
        it = iter(loader)
        batches = [next(it) for _ in range(6)]
    assert all(x["image_id"] == 7 for b in batches for x in b)  # b.jpg replaced by a.jpg every time
    warnings = [r.getMessage() for r in caplog.records if "Skipping a training image" in r.getMessage()]
    assert len(warnings) == 1 and "b.jpg" in warnings[0] and "1 skips so far" in warnings[0]
    assert sum(loader.dataset.skipped.values()) >= 3  # b.jpg is drawn about every other time
    again = next(iter(build_detection_train_loader(cfg, [tiny])))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(again, batches[0]))  # seeded stream


def test_worker_errors_print_as_one_line():
    message = ("Caught DatasetFormatError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\ndetres.data.build.DatasetFormatError: a.json: images[0] (id 1): bad')
    assert str(DatasetFormatError(message)) == "a.json: images[0] (id 1): bad"
    assert str(DatasetFormatError("a.json: bad: x")) == "a.json: bad: x"
    assert isinstance(ImageReadError("x"), DatasetError) and isinstance(ImageReadError("x"), OSError)


@pytest.mark.parametrize("num_gpus", [1, 2])
def test_train_net_prints_one_line_and_exits_1(tmp_path, run_tool, num_gpus):
    _write(tmp_path, _set("images", 1, "id", 7))
    proc = run_tool(
        "train_net", "--config", "configs/quickstart.yaml", "--num-gpus", str(num_gpus), "MODEL.DEVICE", "cpu",
        "DATASETS.ROOT", str(tmp_path), "DATASETS.REGISTER", "[['bad', 'ann.json', '.']]",
        "DATASETS.TRAIN", "('bad',)", "DATASETS.TEST", "('bad',)", "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", str(tmp_path / "out"), env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    expected = f"error: {tmp_path / 'ann.json'}: images[1] (id 7): the id is repeated (first at images[0])"
    if num_gpus == 2:  # the first process to fail stops the other, which may not have printed yet
        assert lines[0] == expected and len(lines) in (2, 3) and set(lines[:-1]) == {expected}, lines
        assert "exited with code 1; the other processes were stopped" in lines[-1]
    else:
        assert lines == [expected]
