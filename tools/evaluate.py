#!/usr/bin/env python
"""COCO bbox evaluation of a saved results file (pycocotools COCOeval), without running a model.

    python tools/evaluate.py --dataset-json annotations/instances_val2017.json --results coco_instances_results.json
    python tools/evaluate.py --config X.yaml --dataset coco_2017_val --results results.json [KEY VALUE ...]

The results file is the official COCO detection results format (what COCOEvaluator writes as
``coco_instances_results.json``): a json list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` with the dataset's own category ids. Prints AP, AP50, AP75, APs, APm, APl, AR1, AR10,
AR100, ARs, ARm, ARl and per-category AP, in percent, over every ground-truth image (``--subset``:
only the images that appear in the results).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.build import register_from_config  # noqa: E402
from detres.data.catalog import MetadataCatalog  # noqa: E402
from detres.data.detection.coco import load_coco_api  # noqa: E402
from detres.evaluation.coco_evaluation import evaluate_coco, format_results_table  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--dataset-json", help="COCO instances json of the ground truth")
    gt.add_argument("--config", help="a detres config; the ground truth is --dataset's json_file")
    parser.add_argument("--dataset", help="registered dataset name (with --config)")
    parser.add_argument("--results", required=True, help="json list of detections (COCO results format)")
    parser.add_argument("--subset", action="store_true",
                        help="evaluate only on the images that appear in the results (default: every image)")
    parser.add_argument("--output", help="also write the metrics as json to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (with --config)")
    args = parser.parse_args(argv)
    if args.config and not args.dataset:
        parser.error("--config needs --dataset NAME")
    if (args.dataset or args.opts) and not args.config:
        parser.error("--dataset and KEY VALUE overrides need --config")
    return args


def ground_truth_json(args: argparse.Namespace) -> str:
    if args.dataset_json:
        return args.dataset_json
    cfg = load_config(args.config, args.opts)
    register_from_config(cfg)
    json_file = getattr(MetadataCatalog.get(args.dataset), "json_file", None)
    if not json_file:
        raise ValueError(f"dataset {args.dataset!r} is not a registered COCO-format dataset (no json_file)")
    return json_file


def run(args: argparse.Namespace) -> dict:
    coco_gt = load_coco_api(ground_truth_json(args))
    try:
        with open(args.results) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"results file not found: {args.results}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{args.results}: not a valid json file: {e}") from None
    if not isinstance(results, list):
        raise ValueError(f"{args.results}: expected a json list of detections, got {type(results).__name__}")
    img_ids = {r["image_id"] for r in results} if args.subset else None
    metrics = evaluate_coco(coco_gt, results, img_ids=img_ids, source=args.results)
    print(format_results_table(metrics))
    if args.output:
        Path(args.output).write_text(json.dumps({"bbox": metrics}, indent=2) + "\n")
    return metrics


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as e:
        sys.exit(f"evaluate.py: error: {e}")


if __name__ == "__main__":
    main()
