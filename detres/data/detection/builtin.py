"""Detection datasets known by name, registered from a config by ``register_detection_datasets(cfg)``.

* ``coco_2017_train`` / ``coco_2017_val``: ``<DATASETS.ROOT>/coco/{train2017,val2017}/`` and
  ``<DATASETS.ROOT>/coco/annotations/instances_{train,val}2017.json`` (see ``datasets/COCO.md``).
  Their class names are known without the files (``COCO_CATEGORIES``), so a COCO model can be run
  by ``tools/demo.py`` without the dataset.
* ``coco_2014_{train,val}`` (``coco/{train2014,val2014}/``, ``instances_{train,val}2014.json``) and
  Detectron's split of val2014: ``coco_2014_minival`` / ``coco_2014_valminusminival``
  (``instances_{minival,valminusminival}2014.json``, images in ``coco/val2014/``).
* ``coco_2017_test-dev``: images only (``coco/test2017/``, ``image_info_test-dev2017.json``); the
  COCO evaluator writes the results json for the evaluation server instead of scoring.
* ``voc_2007_{train,val,trainval,test}`` / ``voc_2012_{train,val,trainval}``:
  ``<DATASETS.ROOT>/VOCdevkit/VOC{2007,2012}`` (see ``voc.py``; difficult objects left out of the
  records unless ``DATASETS.VOC.KEEP_DIFFICULT``). VOC2012 test has no public annotations and is
  not registered.
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
from detres.data.detection.voc import register_voc_instances

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
_HOW_TO_GET_VOC = (
    "See the PASCAL VOC section of datasets/README.md for how to download and lay out VOCdevkit/, and set "
    "DATASETS.ROOT (or $DETRES_DATASETS) to the folder holding it"
)
# name -> (annotation file under coco/annotations/, image folder under coco/); Detectron's 2014 splits.
_COCO_FILES = {
    "coco_2017_train": ("instances_train2017.json", "train2017"),
    "coco_2017_val": ("instances_val2017.json", "val2017"),
    "coco_2014_train": ("instances_train2014.json", "train2014"),
    "coco_2014_val": ("instances_val2014.json", "val2014"),
    "coco_2014_minival": ("instances_minival2014.json", "val2014"),
    "coco_2014_valminusminival": ("instances_valminusminival2014.json", "val2014"),
    "coco_2017_test-dev": ("image_info_test-dev2017.json", "test2017"),
}
_VOC_SPLITS = {2007: ("train", "val", "trainval", "test"), 2012: ("train", "val", "trainval")}


def _register(name: str, json_file: str, image_root: str, **kwargs) -> None:
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (getattr(meta, "json_file", None), getattr(meta, "image_root", None)) == (json_file, image_root):
            return
        DatasetCatalog.remove(name)
    register_coco_instances(name, json_file, image_root, **kwargs)


def _register_voc(cfg, root) -> None:
    keep = bool(cfg.DATASETS.VOC.KEEP_DIFFICULT)
    for year, splits in _VOC_SPLITS.items():
        dirname = str(root / "VOCdevkit" / f"VOC{year}")
        for split in splits:
            name = f"voc_{year}_{split}"
            if name in DatasetCatalog:
                meta = MetadataCatalog.get(name)
                if (getattr(meta, "dirname", None), getattr(meta, "keep_difficult", None)) == (dirname, keep):
                    continue
                DatasetCatalog.remove(name)
            register_voc_instances(name, dirname, split, year, keep_difficult=keep, missing_hint=_HOW_TO_GET_VOC)


def register_detection_datasets(cfg) -> None:
    """Register the built-in COCO, VOC and synthetic detection datasets and those of ``DATASETS.REGISTER``."""
    root = dataset_root(cfg)
    coco_meta = {
        "thing_classes": [name for _, name in COCO_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {cat_id: i for i, (cat_id, _) in enumerate(COCO_CATEGORIES)},
    }
    for name, (json_name, image_folder) in _COCO_FILES.items():
        _register(name, str(root / "coco" / "annotations" / json_name), str(root / "coco" / image_folder),
                  missing_hint=_HOW_TO_GET_COCO, **coco_meta)
    _register_voc(cfg, root)
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
