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
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.classification.datasets import IMAGE_EXTENSIONS  # noqa: E402
from detres.data.detection.mapper import ImageReadError, read_image  # noqa: E402
from detres.engine.predictor import Predictor  # noqa: E402
from detres.utils.visualizer import draw_instances  # noqa: E402


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


def run(args: argparse.Namespace) -> List[Path]:
    cfg = load_config(args.config, args.opts)
    images = input_images(Path(args.input))
    predictor = Predictor(cfg)
    out_dir = Path(args.output)
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
