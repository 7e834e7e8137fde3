"""check_classes: a model evaluated on a dataset with another number of classes is a config error
naming both numbers (a warning with TEST.ALLOW_CLASS_MISMATCH); checkpoint names that differ warn."""
import logging

import pytest

from detres.config import ConfigError, get_cfg
from detres.data.catalog import MetadataCatalog
from detres.evaluation.classes import check_classes, dataset_class_names, model_num_classes


@pytest.fixture
def six_class_dataset():
    MetadataCatalog.set("class_check_val", thing_classes=["a", "b", "c", "d", "e", "f"])
    yield "class_check_val"
    MetadataCatalog.remove("class_check_val")


def _cfg(arch="FasterRCNN", num_classes=6):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.CLASSIFIER.NUM_CLASSES = num_classes
    return cfg


def test_another_number_of_classes_is_a_config_error(six_class_dataset):
    with pytest.raises(ConfigError) as info:
        check_classes(_cfg(num_classes=80), six_class_dataset)
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "80 classes (MODEL.ROI_HEADS.NUM_CLASSES)" in message and "'class_check_val' has 6" in message
    assert "TEST.ALLOW_CLASS_MISMATCH" in message
    with pytest.raises(ConfigError, match=r"1000 classes \(MODEL.CLASSIFIER.NUM_CLASSES\)"):
        check_classes(_cfg("ImageClassifier", 1000), six_class_dataset)
    check_classes(_cfg(num_classes=6), six_class_dataset)  # same count: fine
    check_classes(_cfg("SomeToyModel", 80), six_class_dataset)  # no known key: not checked


def test_allowed_mismatch_and_different_names_warn(six_class_dataset, caplog):
    cfg = _cfg(num_classes=3)
    cfg.TEST.ALLOW_CLASS_MISMATCH = True
    with caplog.at_level(logging.WARNING, logger="detres"):
        check_classes(cfg, six_class_dataset)
        check_classes(_cfg(), six_class_dataset, checkpoint_names=["a", "b", "x", "d", "e", "f"])
        check_classes(_cfg(), six_class_dataset, checkpoint_names=["a", "b", "c", "d", "e", "f"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "3 classes" in messages[0] and "evaluating anyway" in messages[0]
    assert "class 2 is 'x' vs 'c'" in messages[1]


def test_counts_and_names_from_config_and_metadata(six_class_dataset):
    assert model_num_classes(_cfg("ImageClassifier", 10)) == ("MODEL.CLASSIFIER.NUM_CLASSES", 10)
    assert model_num_classes(_cfg("SomeToyModel")) is None
    assert dataset_class_names(["class_check_unnamed", six_class_dataset]) == ["a", "b", "c", "d", "e", "f"]
    assert dataset_class_names(["class_check_unnamed"]) is None
    MetadataCatalog.remove("class_check_unnamed")
