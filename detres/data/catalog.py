"""Named datasets: a name maps to a function returning records and to metadata about them.

A record is a plain dict describing one image:

* classification: ``{"file_name": str}`` or ``{"image": np.ndarray (H, W, 3) uint8, RGB}``, plus
  ``"label": int`` (0-based).
* detection: ``{"file_name", "image_id", "height", "width", "annotations": [{"bbox": [x1, y1, x2, y2]
  (absolute pixels, XYXY), "category_id": int (0-based contiguous), "iscrowd": 0|1}, ...]}``
  (PASCAL VOC annotations also carry ``"difficult": 0|1``; its ``image_id`` is the VOC id string).

Metadata (``MetadataCatalog.get(name)``) is a ``types.SimpleNamespace`` that carries at least
``task`` ("classification" | "detection" | "localization"), ``evaluator_type`` ("classification", "coco",
"voc", "localization") and
``thing_classes`` (list of class names).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["DatasetCatalog", "MetadataCatalog", "load_task_datasets"]


class _DatasetCatalog:
    def __init__(self) -> None:
        self._loaders: Dict[str, Callable[[], List[dict]]] = {}
        self._checks: Dict[str, Callable[[], None]] = {}

    def register(self, name: str, loader: Callable[[], List[dict]], check: Optional[Callable[[], None]] = None) -> None:
        """``loader`` returns the records; the optional ``check`` makes sure the files are there (and
        generates a dataset that is generated on first use) without reading them, raising otherwise."""
        if name in self._loaders:
            raise KeyError(f"dataset {name!r} is already registered")
        self._loaders[name] = loader
        if check is not None:
            self._checks[name] = check

    def _require(self, name: str) -> None:
        if name not in self._loaders:
            raise KeyError(
                f"dataset {name!r} is not registered; registered datasets: {', '.join(sorted(self._loaders))}. "
                "Register a COCO-format dataset with DATASETS.REGISTER [[name, json_file, image_root]]."
            )

    def get(self, name: str) -> List[dict]:
        self._require(name)
        return self._loaders[name]()

    def check(self, name: str) -> None:
        """Fail early, with the dataset's own explanation, when ``name`` is unknown or its files are missing."""
        self._require(name)
        if name in self._checks:
            self._checks[name]()

    def remove(self, name: str) -> None:
        self._loaders.pop(name, None)
        self._checks.pop(name, None)
        MetadataCatalog.remove(name)

    def names(self) -> List[str]:
        return sorted(self._loaders)

    def __contains__(self, name: str) -> bool:
        return name in self._loaders


class _MetadataCatalog:
    def __init__(self) -> None:
        self._meta: Dict[str, SimpleNamespace] = {}

    def get(self, name: str) -> SimpleNamespace:
        return self._meta.setdefault(name, SimpleNamespace(name=name))

    def set(self, name: str, **fields) -> SimpleNamespace:
        meta = self.get(name)
        for key, value in fields.items():
            setattr(meta, key, value)
        return meta

    def remove(self, name: str) -> None:
        self._meta.pop(name, None)


DatasetCatalog = _DatasetCatalog()
MetadataCatalog = _MetadataCatalog()


def load_task_datasets(names: Sequence[str], task: str) -> List[Tuple[str, List[dict]]]:
    """``(name, records)`` of each dataset of ``names``, checked to be datasets of ``task`` that share
    ``thing_classes`` (loading a dataset may record its classes in the metadata, so it comes first)."""
    loaded, classes = [], None
    for name in names:
        records = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        if getattr(meta, "task", None) != task:
            raise ValueError(f"dataset {name!r} is not a {task} dataset (task={getattr(meta, 'task', None)!r})")
        if classes is not None and getattr(meta, "thing_classes", None) != classes:
            raise ValueError(f"datasets {list(names)} do not share the same thing_classes; cannot use them together")
        classes = getattr(meta, "thing_classes", None)
        loaded.append((name, records))
    return loaded
