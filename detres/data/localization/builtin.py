"""Localization datasets known by name, registered from a config by ``register_localization_datasets(cfg)``.

Localization (metadata: ``task="localization"``, ``evaluator_type="localization"``, ``thing_classes``
= sorted wnids, ``class_descriptions``, ``root``, ``split``):

==============================================  ==================================================
``imagenet_loc_train`` / ``imagenet_loc_val``   ``<root>/ilsvrc`` (ILSVRC CLS-LOC, layout
                                                ``DATASETS.LOC_LAYOUT``; train: the images with boxes)
``synthetic_loc_train`` / ``synthetic_loc_val``  generated on first use under ``<root>/generated/``
                                                (``DATASETS.SYNTHETIC_LOC``), CSV layout
==============================================  ==================================================

Classification views of the generated set (``task="classification"``, records ``{"file_name",
"label"}``, same images and classes): ``synthetic_loc_cls_train`` / ``synthetic_loc_cls_val``.

``<root>`` is ``$DETRES_DATASETS`` if set, else ``DATASETS.ROOT``. Registering reads no file (the
ImageNet class list is recorded in the metadata when the dataset is loaded); registering again
replaces the entries, so the latest config applies.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

from detres.data.builtin import dataset_root
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.classification.datasets import DatasetLayoutError
from detres.data.localization.ilsvrc import (
    LAYOUTS,
    annotation_folder,
    detect_layout,
    ilsvrc_classes,
    image_folder,
    load_ilsvrc_loc,
    solution_csv,
)
from detres.data.localization.synthetic import (
    SyntheticLocSpec,
    ensure_synthetic_loc,
    synthetic_loc_classes,
    synthetic_loc_folder,
)

__all__ = ["register_localization_dataset", "register_localization_datasets"]

_HOW_TO_GET_ILSVRC = (
    "see the 'ImageNet localization (ILSVRC CLS-LOC)' section of datasets/README.md, and set DATASETS.ROOT "
    "(or $DETRES_DATASETS) to the folder holding ilsvrc/"
)


def register_localization_dataset(name: str, loader: Callable[[], List[dict]],
                                  check: Optional[Callable[[], object]] = None, **metadata) -> None:
    """Register (or replace) a localization dataset whose ``loader()`` returns catalog records;
    ``check()`` makes sure its files are there (generating them if need be) without reading them."""
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, loader, check)
    MetadataCatalog.set(name, task="localization", evaluator_type="localization", **metadata)


def _check_ilsvrc(name: str, root: Path, split: str, layout: str) -> None:
    csv = detect_layout(root, split, layout) == "csv"
    for path in (image_folder(root, split), solution_csv(root, split) if csv else annotation_folder(root, split)):
        if not path.exists():
            raise DatasetLayoutError(f"dataset {name!r}: {path} not found; {_HOW_TO_GET_ILSVRC}")


def _load_ilsvrc(name: str, root: Path, split: str, layout: str) -> List[dict]:
    """Load the records and record the class list (wnids, descriptions) in the metadata."""
    _check_ilsvrc(name, root, split, layout)
    records = load_ilsvrc_loc(root, split, layout, name)
    wnids, descriptions = ilsvrc_classes(root)
    MetadataCatalog.set(name, thing_classes=wnids, class_descriptions=descriptions)
    return records


def _load_synthetic(name: str, generated: Path, spec: SyntheticLocSpec, split: str,
                    classification: bool) -> List[dict]:
    records = load_ilsvrc_loc(ensure_synthetic_loc(generated, spec), split, "csv", name)
    return [{"file_name": r["file_name"], "label": r["label"]} for r in records] if classification else records


def register_localization_datasets(cfg) -> None:
    """Register the ILSVRC CLS-LOC and generated localization datasets for ``cfg``."""
    root = dataset_root(cfg)
    ilsvrc, layout = root / "ilsvrc", cfg.DATASETS.LOC_LAYOUT
    if layout not in LAYOUTS:
        raise ValueError(f"DATASETS.LOC_LAYOUT must be one of {LAYOUTS}, got {layout!r}")
    for split in ("train", "val"):
        name = f"imagenet_loc_{split}"
        register_localization_dataset(name, partial(_load_ilsvrc, name, ilsvrc, split, layout),
                                      partial(_check_ilsvrc, name, ilsvrc, split, layout),
                                      root=str(ilsvrc), split=split, layout=layout)
    s = cfg.DATASETS.SYNTHETIC_LOC
    spec = SyntheticLocSpec(s.NUM_TRAIN, s.NUM_VAL, s.NUM_CLASSES, tuple(s.IMAGE_SIZE), s.SEED)
    generated = root / "generated"
    folder, ensure = str(synthetic_loc_folder(generated, spec)), partial(ensure_synthetic_loc, generated, spec)
    wnids, descriptions = synthetic_loc_classes(spec.num_classes)
    for split in ("train", "val"):
        name = f"synthetic_loc_{split}"
        register_localization_dataset(name, partial(_load_synthetic, name, generated, spec, split, False), ensure,
                                      thing_classes=wnids, class_descriptions=descriptions, root=folder, split=split)
        cls_name = f"synthetic_loc_cls_{split}"
        DatasetCatalog.remove(cls_name)
        DatasetCatalog.register(cls_name, partial(_load_synthetic, cls_name, generated, spec, split, True), ensure)
        MetadataCatalog.set(cls_name, task="classification", evaluator_type="classification", thing_classes=wnids,
                            class_descriptions=descriptions, root=folder, split=split)
