"""Detection datasets known by name, registered from a config by ``register_detection_datasets(cfg)``.

* ``coco_2017_train`` / ``coco_2017_val``: ``<DATASETS.ROOT>/coco/{train2017,val2017}/`` and
  ``<DATASETS.ROOT>/coco/annotations/instances_{train,val}2017.json`` (see ``datasets/COCO.md``).
  Their class names are known without the files (``COCO_CATEGORIES``), so a COCO model can be run
  by ``tools/demo.py`` without the dataset.
* ``synthetic_det_train`` / ``synthetic_det_val``: the shapes dataset of ``synthetic.py`` with the
  parameters of ``DATASETS.SYNTHETIC_DET``, generated on first use under ``<DATASETS.ROOT>/generated/``.
* every ``[name, json_file, image_root]`` of ``DATASETS.REGISTER`` (relative paths are relative to
  ``DATASETS.ROOT``).

``DATASETS.ROOT`` is itself relative to the working directory; ``$DETRES_DATASETS`` overrides it.
Registering again is a no-op for a name already registered with the same files; a name registered
with other files (e.g. another ``DATASETS.ROOT``) is replaced.
"""
from __future__ import annotations

from detres.data.builtin import dataset_root
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.detection.coco import register_coco_instances
from detres.data.detection.synthetic import (
    CLASSES,
    SyntheticDetectionSpec,
    ensure_synthetic_detection,
    synthetic_detection_folder,
)

__all__ = ["COCO_CATEGORIES", "register_detection_datasets"]

_COCO_NAMES = [name.replace("_", " ") for name in (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
    "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag "
    "tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard surfboard "
    "tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange broccoli carrot "
    "hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors teddy_bear "
    "hair_drier toothbrush"
).split()]
_COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
# (category id, name) of the 80 COCO 2014/2017 thing classes.
COCO_CATEGORIES = tuple(zip((i for i in range(1, 91) if i not in _COCO_UNUSED_IDS), _COCO_NAMES))

_HOW_TO_GET_COCO = (
    "See datasets/README.md and datasets/COCO.md for how to download and lay out COCO 2017, set "
    "DATASETS.ROOT (or $DETRES_DATASETS) to the folder holding coco/, or start with the synthetic quickstart: "
    "python tools/train_net.py --config configs/quickstart.yaml"
)


def _register(name: str, json_file: str, image_root: str, **kwargs) -> None:
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root):
            return
        DatasetCatalog.remove(name)
    register_coco_instances(name, json_file, image_root, **kwargs)


def register_detection_datasets(cfg) -> None:
    """Register the built-in COCO and synthetic detection datasets and those of ``DATASETS.REGISTER``."""
    root = dataset_root(cfg)
    coco_meta = {
        "thing_classes": [name for _, name in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)},
    }
    for split in ("train", "val"):
        _register(f"coco_2017_{split}", str(root / "coco" / "annotations" / f"instances_{split}2017.json"),
                  str(root / "coco" / f"{split}2017"), missing_hint=_HOW_TO_GET_COCO, **coco_meta)
    s = cfg.DATASETS.SYNTHETIC_DET
    spec = SyntheticDetectionSpec(
        s.NUM_TRAIN, s.NUM_VAL, s.SEED, tuple(s.IMAGE_SIZE), tuple(s.OBJECTS_PER_IMAGE), tuple(s.OBJECT_SIZE))
    folder = synthetic_detection_folder(root / "generated", spec)
    for split in ("train", "val"):
        _register(f"synthetic_det_{split}", str(folder / "annotations" / f"instances_{split}.json"), str(folder / split),
                  prepare=lambda: ensure_synthetic_detection(root / "generated", spec), thing_classes=list(CLASSES),
                  thing_dataset_id_to_contiguous_id={k + 1: k for k in range(len(CLASSES))})
    for entry in cfg.DATASETS.REGISTER:
        if len(entry) != 3 or not all(isinstance(v, str) for v in entry):
            raise ValueError(f"DATASETS.REGISTER entries must be [name, json_file, image_root], got {entry!r}")
        name, json_file, image_root = entry
        _register(name, str(root / json_file), str(root / image_root))
