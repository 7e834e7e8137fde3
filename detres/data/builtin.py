"""The datasets detres knows by name, registered from a config (``register_builtin_datasets``).

Classification (metadata: ``task="classification"``, ``evaluator_type="classification"``):

==========================================  ================================================
``synthetic_cls_train`` / ``synthetic_cls_val``  generated in memory (``DATASETS.SYNTHETIC``)
``cifar10_train`` / ``cifar10_test``              ``<root>/cifar-10-batches-py``
``imagenet_train`` / ``imagenet_val``             ``<root>/imagenet/{train,val}``
==========================================  ================================================

``<root>`` is ``$DETRES_DATASETS`` if set, else ``DATASETS.ROOT``. Registering touches no file:
a missing dataset is reported (with its path) when it is first loaded. Registering again replaces
the entries, so the latest config's root and settings apply.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.classification.datasets import CIFAR10_CLASSES, imagenet_classes, load_cifar10, load_imagenet
from detres.data.classification.synthetic import SYNTHETIC_CLASSES, load_synthetic

__all__ = ["dataset_root", "register_builtin_datasets", "register_classification_dataset"]


def dataset_root(cfg) -> Path:
    """``$DETRES_DATASETS`` if set, else ``cfg.DATASETS.ROOT`` (relative to the working directory)."""
    return Path(os.path.expanduser(os.environ.get("DETRES_DATASETS") or cfg.DATASETS.ROOT))


def register_classification_dataset(name: str, loader, thing_classes=None, **metadata) -> None:
    """Register (or replace) a classification dataset whose ``loader()`` returns catalog records."""
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    meta = dict(task="classification", evaluator_type="classification", **metadata)
    if thing_classes is not None:
        meta["thing_classes"] = list(thing_classes)
    MetadataCatalog.set(name, **meta)


def _load_imagenet_with_classes(name: str, root: str, split: str):
    """Load the records and record the class list (wnids) in the metadata, which needs the disk."""
    records = load_imagenet(root, split)
    MetadataCatalog.set(name, thing_classes=imagenet_classes(root))
    return records


def _register_classification(cfg) -> None:
    root = dataset_root(cfg)
    syn = cfg.DATASETS.SYNTHETIC
    for split, count in (("train", syn.NUM_TRAIN), ("val", syn.NUM_VAL)):
        register_classification_dataset(
            f"synthetic_cls_{split}",
            partial(load_synthetic, count, syn.SEED, split, syn.IMAGE_SIZE),
            SYNTHETIC_CLASSES,
        )
    cifar = str(root / "cifar-10-batches-py")
    for split in ("train", "test"):
        register_classification_dataset(f"cifar10_{split}", partial(load_cifar10, cifar, split), CIFAR10_CLASSES, root=cifar)
    imagenet = str(root / "imagenet")
    for split in ("train", "val"):
        name = f"imagenet_{split}"
        register_classification_dataset(name, partial(_load_imagenet_with_classes, name, imagenet, split), root=imagenet)


def register_builtin_datasets(cfg) -> None:
    """Register every built-in dataset for ``cfg`` (called by ``detres.data.build``)."""
    _register_classification(cfg)
    from detres.data.detection.builtin import register_detection_datasets  # imports this module

    register_detection_datasets(cfg)
    from detres.data.localization.builtin import register_localization_datasets  # imports this module

    register_localization_datasets(cfg)
