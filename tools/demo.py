#!/usr/bin/env python
"""Run a detection model on images and draw its boxes, class names and scores.

    python tools/demo.py --config configs/detection/X.yaml --input image.jpg --output out/ MODEL.WEIGHTS model.pth
    python tools/demo.py --config X.yaml --input folder/ --output out/ --confidence 0.3 [KEY VALUE ...]

Images are preprocessed like the test loader (``INPUT.FORMAT``, shortest-edge resize to
``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``); detections with score >= ``--confidence`` are drawn on
the original image and written to ``--output`` under the input's file name (as .jpg), with one line
per image printed (its detections' names and scores). Class names are those a detres checkpoint records (no dataset needed), else those of
the config's first test (else training) dataset with MODEL.ROI_HEADS.NUM_CLASSES names, else class
numbers; without MODEL.WEIGHTS the model keeps its random initialisation (a warning says so).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.build import register_from_config  # noqa: E402
from detres.data.catalog import MetadataCatalog  # noqa: E402
from detres.data.classification.datasets import IMAGE_EXTENSIONS  # noqa: E402
from detres.data.detection.mapper import ImageReadError, read_image  # noqa: E402
from detres.data.detection.transforms import DetectionAugmentation  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.utils.visualizer import draw_instances  # noqa: E402

logger = logging.getLogger("detres.demo")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a detres detection config")
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


def class_names(cfg, recorded: Optional[Sequence[str]] = None) -> Optional[List[str]]:
    """The names to label detections with: ``recorded`` (by the checkpoint), else a dataset's of the
    config, whichever has MODEL.ROI_HEADS.NUM_CLASSES names; ``None`` (class numbers) otherwise."""
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


def build_predictor(cfg) -> Tuple[torch.nn.Module, Optional[List[str]]]:
    """The model in eval mode and the class names its weights record (``None`` when they record none)."""
    model = build_model(cfg)
    recorded = None
    if cfg.MODEL.WEIGHTS:
        from detres.modeling.weight_import import load_weights

        recorded = load_weights(model, cfg.MODEL.WEIGHTS).class_names
    else:
        logger.warning("MODEL.WEIGHTS is empty: the model has random weights, its detections are meaningless")
    return model.eval(), recorded


@torch.inference_mode()
def predict(model: torch.nn.Module, cfg, image: np.ndarray) -> dict:
    """The model's detection output for one (H, W, 3) uint8 BGR image ("boxes" XYXY in the image's own
    pixels, "scores", "classes")."""
    if cfg.INPUT.FORMAT == "RGB":
        image = np.ascontiguousarray(image[:, :, ::-1])
    h, w = image.shape[:2]
    transform = DetectionAugmentation.from_config(cfg, is_train=False).sample(h, w, np.random.default_rng(0))
    tensor = torch.from_numpy(transform.apply_image(image).transpose(2, 0, 1).copy())
    return model([{"image": tensor, "height": h, "width": w}])[0]


def run(args: argparse.Namespace) -> List[Path]:
    cfg = load_config(args.config, args.opts)
    images = input_images(Path(args.input))
    model, recorded = build_predictor(cfg)
    names = class_names(cfg, recorded)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = read_image(str(path), "BGR")
        output = {k: v.detach().cpu().numpy() for k, v in predict(model, cfg, image).items()}
        keep = output["scores"] >= args.confidence
        picture = draw_instances(image, output["boxes"][keep], output["classes"][keep],
                                 output["scores"][keep], names)
        target = out_dir / (path.stem + ".jpg")
        if not cv2.imwrite(str(target), picture):
            raise OSError(f"cannot write {target}")
        written.append(target)
        labels = [names[c] if names is not None else f"class {c}" for c in output["classes"][keep]]
        found = ", ".join(f"{label} {score:.2f}" for label, score in zip(labels, output["scores"][keep]))
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
