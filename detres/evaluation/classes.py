"""Class counts and names of a model, its datasets and its checkpoint, and the check that they agree.

* The model's number of classes is a config key chosen by ``MODEL.META_ARCHITECTURE``
  (:data:`NUM_CLASSES_KEYS`): ``MODEL.ROI_HEADS.NUM_CLASSES`` (detection, background excluded) or
  ``MODEL.CLASSIFIER.NUM_CLASSES`` (classification, and the localization stages).
* A dataset's class names are its metadata's ``thing_classes`` (set when it is registered, or when its
  records are loaded, e.g. ImageNet's folders or a custom COCO json).
* Checkpoints written by detres record the training datasets' names under ``class_names`` (a plain
  list of str, so they still load with ``torch.load(weights_only=True)``).

Evaluating a model on a dataset with another number of classes scores class ``k`` of the one as class
``k`` of the other, which is meaningless: :func:`check_classes` makes it a :class:`ConfigError` unless
``TEST.ALLOW_CLASS_MISMATCH`` is set. Same count, different names only warns: names are often spelt
differently for the same classes (``motorbike`` / ``motorcycle``, WordNet ids / words).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

from detres.config import ConfigError
from detres.data.catalog import DatasetCatalog, MetadataCatalog

__all__ = ["NUM_CLASSES_KEYS", "check_classes", "check_test_datasets", "dataset_class_names", "model_num_classes"]

logger = logging.getLogger(__name__)

NUM_CLASSES_KEYS = {
    "FasterRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
    "ImageClassifier": "MODEL.CLASSIFIER.NUM_CLASSES",
    "PerClassRPNLocalizer": "MODEL.CLASSIFIER.NUM_CLASSES",
    "RCNNRescorer": "MODEL.CLASSIFIER.NUM_CLASSES",
}


def model_num_classes(cfg) -> Optional[Tuple[str, int]]:
    """``(config key, number of classes)`` of the model ``cfg`` builds; ``None`` for an architecture
    without a known key (e.g. a test's toy model)."""
    key = NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE)
    if key is None:
        return None
    node = cfg
    for part in key.split("."):
        node = node[part]
    return key, int(node)


def dataset_class_names(dataset_names: Sequence[str]) -> Optional[List[str]]:
    """The ``thing_classes`` of the first of ``dataset_names`` whose metadata has them, else ``None``."""
    for name in dataset_names:
        names = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if names is not None:
            return [str(n) for n in names]
    return None


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return f"class {i} is {a[i]!r} vs {b[i]!r}"


def check_classes(cfg, dataset_name: str, checkpoint_names: Optional[Sequence[str]] = None) -> None:
    """Raise :class:`ConfigError` when the model's number of classes differs from that of
    ``dataset_name`` (a warning when ``TEST.ALLOW_CLASS_MISMATCH``); warn when ``checkpoint_names``
    (the class names the model's checkpoint records) differ from the dataset's names.

    Needs the dataset's ``thing_classes`` in its metadata; a dataset without them is not checked.
    """
    names = dataset_class_names([dataset_name])
    model = model_num_classes(cfg)
    if names is None or model is None:
        return
    key, num = model
    if num != len(names):
        problem = (f"the model has {num} classes ({key}) but dataset {dataset_name!r} has {len(names)}: "
                   "its classes would be scored as the model's classes of the same index")
        if not cfg.TEST.ALLOW_CLASS_MISMATCH:
            raise ConfigError(f"{problem}; set {key} {len(names)} for this dataset, or TEST.ALLOW_CLASS_MISMATCH "
                              "True to evaluate anyway")
        logger.warning("%s (evaluating anyway: TEST.ALLOW_CLASS_MISMATCH is set)", problem)
        return
    if checkpoint_names is not None and list(checkpoint_names) != names:
        if len(checkpoint_names) != len(names):
            detail = f"{len(checkpoint_names)} names for {len(names)} classes"
        else:
            detail = _first_difference(checkpoint_names, names)
        logger.warning("the checkpoint's class names differ from those of dataset %r (%s): check that both list "
                       "the same classes in the same order", dataset_name, detail)


def check_test_datasets(cfg) -> None:
    """:func:`check_classes` for every dataset of ``DATASETS.TEST``, before a model is built or trained:
    a mismatch found only at the end of training would cost the run. A dataset whose class names come
    with its records (a COCO json, ImageNet folders) is loaded for it."""
    from detres.data.build import register_from_config

    register_from_config(cfg)
    for name in cfg.DATASETS.TEST:
        if dataset_class_names([name]) is None:
            DatasetCatalog.get(name)
        check_classes(cfg, name)
