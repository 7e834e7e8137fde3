"""Detection as a library: ``create_detector`` (config -> ``FasterRCNN`` with its weights) and
``Predictor`` (one image in, its detections in original pixels out), like Detectron2's
``DefaultPredictor``::

    import detres
    predictor = detres.Predictor("quickstart", weights="output/quickstart/model_final.pth")
    out = predictor("image.jpg")      # or an (H, W, 3) uint8 BGR array, or a (3, H, W) uint8 tensor
    out["boxes"], out["scores"], out["classes"], out["class_names"]

A config is a YAML path, a loaded ``CfgNode``, or the name of a config shipped in the source checkout's
``configs/`` folder: ``"quickstart"`` (``configs/quickstart.yaml``), ``"frcnn_r50_coco"``,
``"faster_rcnn_R_50_C4_1x"`` (``configs/detection/``), ... ``opts`` are ``KEY VALUE`` overrides, as
the tools take them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from detres.config import CfgNode, ConfigError, load_config
from detres.data.build import register_from_config
from detres.data.catalog import MetadataCatalog
from detres.data.detection.transforms import DetectionAugmentation
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.classifier import ImageLike, as_rgb_image
from detres.modeling.test_time import build_test_time_model

__all__ = ["CONFIG_DIR", "Predictor", "create_detector", "detector_config", "find_config", "resolve_class_names"]

logger = logging.getLogger(__name__)

# The shipped configs: the source checkout's configs/ folder, next to the detres package.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_SHIPPED_SUBFOLDERS = (".", "detection")
ConfigLike = Union[str, Path, CfgNode]


def find_config(config_or_name: Union[str, Path]) -> Path:
    """A config file: ``config_or_name`` itself if it is a file, else the shipped config of that name
    (``"quickstart"`` -> ``configs/quickstart.yaml``, ``"faster_rcnn_R_50_C4_1x"`` ->
    ``configs/detection/faster_rcnn_R_50_C4_1x.yaml``); a ``ConfigError`` lists the names otherwise."""
    path = Path(config_or_name)
    if path.is_file():
        return path
    name = path.name[: -len(".yaml")] if path.suffix == ".yaml" else str(config_or_name)
    candidates = [CONFIG_DIR / sub / f"{name}.yaml" for sub in _SHIPPED_SUBFOLDERS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    if not CONFIG_DIR.is_dir():
        raise ConfigError(f"config {config_or_name!r} is not a file, and there are no shipped configs: they live in "
                          f"the source checkout's configs/ folder ({CONFIG_DIR} does not exist); pass a config path")
    shipped = sorted(p.stem for sub in _SHIPPED_SUBFOLDERS for p in (CONFIG_DIR / sub).glob("*.yaml"))
    raise ConfigError(f"config {config_or_name!r} is neither a file nor a shipped config name; shipped "
                      f"(in {CONFIG_DIR}): {', '.join(shipped)}")


def detector_config(config: ConfigLike, weights: Optional[str] = None, opts: Sequence[str] = ()) -> CfgNode:
    """The detection config ``config`` names (a ``CfgNode`` is cloned), with ``opts`` applied and
    ``MODEL.WEIGHTS`` set to ``weights`` unless that is ``None``."""
    if isinstance(config, CfgNode):
        cfg = config.clone()
        cfg.defrost()
        cfg.merge_from_list(list(opts))
    else:
        cfg = load_config(str(find_config(config)), opts)
    if weights is not None:
        cfg.MODEL.WEIGHTS = str(weights)
    if cfg.MODEL.META_ARCHITECTURE != "FasterRCNN":
        raise ConfigError(f"a detector needs MODEL.META_ARCHITECTURE FasterRCNN, this config has "
                          f"{cfg.MODEL.META_ARCHITECTURE!r} (for classifiers: detres.create_model)")
    return cfg


def _build_detector(cfg) -> Tuple[nn.Module, Optional[List[str]]]:
    """The model of ``cfg`` in eval mode with ``MODEL.WEIGHTS`` loaded, and the class names the
    weights record (``None`` when they record none)."""
    model = build_model(cfg)
    recorded = None
    if cfg.MODEL.WEIGHTS:
        from detres.modeling.weight_import import load_weights

        recorded = load_weights(model, cfg.MODEL.WEIGHTS).class_names
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights, its detections are meaningless")
    return model.eval(), recorded


def create_detector(config: ConfigLike, weights: Optional[str] = None, opts: Sequence[str] = ()) -> nn.Module:
    """The ``FasterRCNN`` of ``config`` in eval mode, on ``MODEL.DEVICE``, with its weights loaded.

    ``weights`` (a path, URL or scheme, see :mod:`detres.modeling.weight_import`) replaces the config's
    ``MODEL.WEIGHTS``; ``None`` keeps it (often only ImageNet weights for the backbone). The model takes
    the dict inputs of the test loader (``[{"image": (3, H, W) resized, "height": h, "width": w}]``);
    :class:`Predictor` takes plain images.
    """
    return _build_detector(detector_config(config, weights, opts))[0]


def resolve_class_names(cfg, recorded: Optional[Sequence[str]] = None) -> Optional[List[str]]:
    """The names to label detections with: ``recorded`` (by the checkpoint), else a dataset's of the
    config, whichever has ``MODEL.ROI_HEADS.NUM_CLASSES`` names; ``None`` (class numbers) otherwise."""
    num = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if recorded is not None and len(recorded) == num:
        return list(recorded)
    register_from_config(cfg)
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        names = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if names is not None and len(names) == num:
            return list(names)
    logger.warning("neither the checkpoint nor a dataset of the config has %d class names; labelling detections "
                   "by class index", num)
    return None


class Predictor:
    """One image in, its detections out: ``predictor(image)`` ->

    * ``"boxes"``: ``(D, 4)`` float32, XYXY in the original image's pixels;
    * ``"scores"``: ``(D,)``; ``"classes"``: ``(D,)`` int64 in ``[0, NUM_CLASSES)``;
    * ``"class_names"``: ``D`` strings (``"class 3"`` where no names are known);

    as CPU tensors, highest scores first. ``image``: a file path, a PIL image, an ``(H, W, 3)`` uint8
    array or a ``(3, H, W)`` uint8 tensor, arrays and tensors in ``image_format`` channel order
    ("BGR" by default, as OpenCV reads; "RGB" for PIL / torchvision.io images).

    The image goes the test loader's way -- ``INPUT.FORMAT`` channel order, shorter side resized to
    ``INPUT.MIN_SIZE_TEST`` (longer side at most ``MAX_SIZE_TEST``) -- through the detector with the
    config's test-time options (``TEST.FLIP``, ``TEST.MULTI_SCALE``, ``TEST.ENSEMBLE``), as evaluation runs it.

    ``Predictor(config, weights, opts)`` builds the model like :func:`create_detector`;
    ``Predictor(config, model=detector)`` uses a built one. Class names: ``class_names`` if given, else
    those the checkpoint records, else those of the config's first test (else training) dataset with
    ``NUM_CLASSES`` names, else class numbers. Attributes: ``cfg``, ``model``, ``class_names``.
    """

    def __init__(self, config: ConfigLike, weights: Optional[str] = None, opts: Sequence[str] = (), *,
                 model: Optional[nn.Module] = None, class_names: Optional[Sequence[str]] = None,
                 image_format: str = "BGR"):
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format must be 'BGR' or 'RGB', got {image_format!r}")
        if model is not None and weights is not None:
            raise ValueError("pass either a built model or weights to load, not both")
        self.cfg = detector_config(config, weights, opts)
        recorded = None
        if model is None:
            model, recorded = _build_detector(self.cfg)
        self.model = model.eval()
        self.class_names = list(class_names) if class_names is not None else resolve_class_names(self.cfg, recorded)
        self.image_format = image_format
        self._detector = build_test_time_model(self.cfg, self.model)
        self._augmentation = DetectionAugmentation.from_config(self.cfg, is_train=False)
        self.cfg.freeze()

    def model_input(self, image: ImageLike) -> Dict[str, Any]:
        """The test loader's input dict for ``image``: ``{"image": (3, h', w') uint8 resized, in
        INPUT.FORMAT order, "height": H, "width": W}``."""
        array = as_rgb_image(image, self.image_format)
        if self.cfg.INPUT.FORMAT == "BGR":
            array = np.ascontiguousarray(array[:, :, ::-1])
        h, w = array.shape[:2]
        resize = self._augmentation.sample(h, w, np.random.default_rng(0))  # test time: fixed size, no flip
        return {"image": torch.from_numpy(resize.apply_image(array).transpose(2, 0, 1).copy()), "height": h, "width": w}

    @torch.inference_mode()
    def __call__(self, image: ImageLike) -> Dict[str, Any]:
        output = self._detector([self.model_input(image)])[0]
        result: Dict[str, Any] = {key: output[key].cpu() for key in ("boxes", "scores", "classes")}
        names = self.class_names
        result["class_names"] = [names[c] if names is not None and c < len(names) else f"class {c}"
                                 for c in result["classes"].tolist()]
        return result
