"""Data loaders for training and testing, chosen by the dataset's task (see ``catalog``), and the
errors of bad dataset content (``DatasetError``: tools print it as one line naming the file)."""
from __future__ import annotations

from typing import List

from detres.data.catalog import DatasetCatalog, MetadataCatalog

__all__ = [
    "DatasetError",
    "DatasetFormatError",
    "build_train_loader",
    "build_test_loader",
    "check_datasets",
    "dataset_task",
    "register_from_config",
]

_WORKER_TRACEBACK = "\nOriginal Traceback (most recent call last):"


class DatasetError(Exception):
    """Bad dataset content; its message names the file and the record.

    A DataLoader worker's exception is re-raised in the main process with the worker's traceback
    appended to its message; ``str()`` gives back the original one-line message.
    """

    def __str__(self) -> str:
        text = super().__str__()
        if _WORKER_TRACEBACK not in text:
            return text
        return text.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]


class DatasetFormatError(DatasetError, ValueError):
    """An annotation file or record that does not follow its format (wrong type, missing field,
    duplicate id, unknown reference, image too large)."""


def register_from_config(cfg) -> None:
    """Register the built-in datasets and the custom COCO-format ones of ``DATASETS.REGISTER``."""
    from detres.data.builtin import register_builtin_datasets

    register_builtin_datasets(cfg)


def check_datasets(cfg, train: bool = True) -> None:
    """Raise early (before a model is built or weights are downloaded) when a dataset of
    ``DATASETS.TEST`` (and ``DATASETS.TRAIN`` when ``train``) is unknown or its files are missing;
    datasets generated on first use are generated here."""
    from detres.config import ConfigError

    register_from_config(cfg)
    for name in (list(cfg.DATASETS.TRAIN) if train else []) + list(cfg.DATASETS.TEST):
        try:
            DatasetCatalog.check(name)
        except KeyError as e:  # a dataset name in the config that nothing registers
            raise ConfigError(e.args[0]) from None


def dataset_task(names: List[str]) -> str:
    tasks = {getattr(MetadataCatalog.get(n), "task", None) for n in names}
    if len(tasks) != 1 or None in tasks:
        raise ValueError(f"datasets {names} must all be registered and share one task; got tasks {tasks}")
    return tasks.pop()


def build_train_loader(cfg, start_iter: int = 0):
    """An infinite iterator-like loader yielding ``List[dict]`` batches for this process, starting at
    batch ``start_iter`` of the seeded stream (a resumed run continues exactly where it stopped)."""
    register_from_config(cfg)
    names = list(cfg.DATASETS.TRAIN)
    task = dataset_task(names)
    if task == "classification":
        from detres.data.classification.loader import build_classification_train_loader

        return build_classification_train_loader(cfg, names, start_iter=start_iter)
    if task == "localization":
        from detres.data.localization.loader import build_localization_train_loader

        return build_localization_train_loader(cfg, names, start_iter=start_iter)
    from detres.data.detection.loader import build_detection_train_loader

    return build_detection_train_loader(cfg, names, start_iter=start_iter)


def build_test_loader(cfg, dataset_name: str):
    """A finite loader over ``dataset_name`` yielding ``List[dict]`` batches (inference order)."""
    register_from_config(cfg)
    task = dataset_task([dataset_name])
    if task == "classification":
        from detres.data.classification.loader import build_classification_test_loader

        return build_classification_test_loader(cfg, dataset_name)
    if task == "localization":
        from detres.data.localization.loader import build_localization_test_loader

        return build_localization_test_loader(cfg, dataset_name)
    from detres.data.detection.loader import build_detection_test_loader

    return build_detection_test_loader(cfg, dataset_name)
