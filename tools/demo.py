#!/usr/bin/env python
"""Run a detection model on images and draw its boxes, class names and scores.

    python tools/demo.py --config configs/detection/X.yaml --input image.jpg --output out/ MODEL.WEIGHTS model.pth
    python tools/demo.py --config X.yaml --input folder/ --output out/ --confidence 0.3 [KEY VALUE ...]

Each image goes through ``detres.Predictor``: preprocessed like the test loader (``INPUT.FORMAT``,
shortest-edge resize to ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), run with the config's test-time
options. Detections with score >= ``--confidence`` are drawn on the original image and written to
``--output`` under the input's file name (as .jpg), with one line per image printed (its detections'
names and scores). Class names are those a detres checkpoint records (no dataset needed), else those
of the config's first test (else training) dataset with MODEL.ROI_HEADS.NUM_CLASSES names, else class
numbers; without MODEL.WEIGHTS the model keeps its random initialisation (a warning says so).

With a localizer config (MODEL.META_ARCHITECTURE PerClassRPNLocalizer, e.g.
configs/localization/quickstart_loc.yaml) each image goes the localization test loader's way
(TEST.LOC_MODE, INPUT.LOC sizes) and its five (class, box) guesses -- the attached classifiers' top-5
classes, each with the localizer's box -- are drawn and printed, best first; --confidence is not used.
Class names: the first synonym of the dataset's class descriptions (else its wnids).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detres.config import CfgNode, ConfigError, load_config  # noqa: E402
from detres.data.build import register_from_config  # noqa: E402
from detres.data.catalog import MetadataCatalog  # noqa: E402
from detres.data.classification.datasets import IMAGE_EXTENSIONS  # noqa: E402
from detres.data.detection.mapper import ImageReadError, read_image  # noqa: E402
from detres.data.localization.transforms import LocTestViews  # noqa: E402
from detres.engine.predictor import Predictor  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.modeling.meta_arch.class_predictor import to_format  # noqa: E402
from detres.utils.visualizer import draw_instances  # noqa: E402

LOCALIZER = "PerClassRPNLocalizer"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a detres detection (or localizer) config")
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence", type=float, default=0.5, help="minimum score of a drawn detection")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS x.pth")
    return parser.parse_args(argv)


def input_images(path: Path) -> List[Path]:
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
        return images
    if not path.is_file():
        raise ValueError(f"input not found: {path}")
    return [path]


def localization_input(image_bgr: np.ndarray, views: LocTestViews, input_format: str) -> Dict[str, Any]:
    """The localization test loader's input for an ``(H, W, 3)`` uint8 BGR image: ``{"image": list of
    (3, h, w) views in input_format order, "height": H, "width": W, "crop_box": [x0, y0, x1, y1]}``."""
    rgb = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1])).permute(2, 0, 1)
    geometries = views.geometries(*rgb.shape[-2:])
    return {"image": [to_format(g.apply_image(rgb), "RGB", input_format) for g in geometries],
            "height": rgb.shape[1], "width": rgb.shape[2], "crop_box": geometries[0].crop_box()}


def localization_class_names(cfg: CfgNode) -> Optional[List[str]]:
    """The first synonym of each class description (else the wnid) of the config's first test (else
    training) dataset with MODEL.CLASSIFIER.NUM_CLASSES classes; ``None`` when none has them."""
    register_from_config(cfg)
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        names = getattr(meta, "class_descriptions", None) or getattr(meta, "thing_classes", None)
        if names is not None and len(names) == cfg.MODEL.CLASSIFIER.NUM_CLASSES:
            return [str(n).split(",")[0] for n in names]
    return None


def run_localizer(cfg: CfgNode, images: List[Path], out_dir: Path) -> List[Path]:
    """Draw and print the localizer's five (class, box) guesses on each image (module docstring)."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("a localizer needs MODEL.WEIGHTS (the trained localizer's model_final.pth)")
    model = build_model(cfg)
    if model.classifiers is None:
        raise ValueError("the demo draws the top-5 classes of the classifiers attached to the localizer: set "
                         "MODEL.LOCALIZER.CLASSIFIER_CONFIGS and CLASSIFIER_WEIGHTS")
    from detres.modeling.weight_import import load_weights

    load_weights(model, cfg.MODEL.WEIGHTS, require_class_layers=True)
    model.eval()
    views, names = LocTestViews.from_config(cfg), localization_class_names(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = read_image(str(path), "BGR")
        with torch.inference_mode():
            output = model([localization_input(image, views, cfg.INPUT.FORMAT)])[0]
        classes, scores = output["pred_classes"].tolist(), output["scores"].tolist()
        boxes = output["pred_boxes"].cpu().numpy()
        target = out_dir / (path.stem + ".jpg")
        if not cv2.imwrite(str(target), draw_instances(image, boxes, classes, scores, names)):
            raise OSError(f"cannot write {target}")
        written.append(target)
        guesses = "; ".join(f"{names[c] if names else f'class {c}'} {score:.2f} [{', '.join(f'{v:.0f}' for v in box)}]"
                            for c, score, box in zip(classes, scores, boxes))
        print(f"{path}: top-5 (class score [x1, y1, x2, y2]) {guesses} -> {target}")
    return written


def run(args: argparse.Namespace) -> List[Path]:
    cfg = load_config(args.config, args.opts)
    images = input_images(Path(args.input))
    out_dir = Path(args.output)
    if cfg.MODEL.META_ARCHITECTURE == LOCALIZER:
        return run_localizer(cfg, images, out_dir)
    predictor = Predictor(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = read_image(str(path), "BGR")
        output = predictor(image)
        keep = (output["scores"] >= args.confidence).numpy()
        boxes, classes, scores = (output[k].numpy()[keep] for k in ("boxes", "classes", "scores"))
        picture = draw_instances(image, boxes, classes, scores, predictor.class_names)
        target = out_dir / (path.stem + ".jpg")
        if not cv2.imwrite(str(target), picture):
            raise OSError(f"cannot write {target}")
        written.append(target)
        labels = [name for name, kept in zip(output["class_names"], keep) if kept]
        found = ", ".join(f"{label} {score:.2f}" for label, score in zip(labels, scores))
        print(f"{path}: {int(keep.sum())} detections with score >= {args.confidence} -> {target}"
              + (f" ({found})" if found else ""))
    return written


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, ImageReadError) as e:
        sys.exit(f"demo.py: error: {e}")


if __name__ == "__main__":
    main()
