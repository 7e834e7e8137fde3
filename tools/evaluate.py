#!/usr/bin/env python
"""Evaluate saved detection results without running a model: COCO (pycocotools COCOeval, bbox) or
PASCAL VOC (the devkit's conventions, ``detres.evaluation.voc_evaluation``); or an ImageNet
localization submission (``--task localization``, ILSVRC CLS-LOC rules,
``detres.evaluation.localization_evaluation``).

    python tools/evaluate.py --dataset-json annotations/instances_val2017.json --results coco_instances_results.json
    python tools/evaluate.py --voc-root VOCdevkit/VOC2007 --image-set test --results DIR [--metric area]
    python tools/evaluate.py --config X.yaml --dataset NAME --results PATH [KEY VALUE ...]
    python tools/evaluate.py --task localization --solution LOC_val_solution.csv --submission sub.csv \
        [--gt-class-submission gt.csv] [--output metrics.json]

COCO: the results file is the official COCO detection results format (what COCOEvaluator writes as
``coco_instances_results.json``): a json list of ``{"image_id", "category_id", "bbox": [x, y, w, h],
"score"}`` with the dataset's own category ids. Prints AP, AP50, AP75, APs, APm, APl, AR1, AR10,
AR100, ARs, ARm, ARl and per-category AP, in percent. ``--backend faster_coco_eval`` evaluates with the
faster-coco-eval package (same numbers; default: ``TEST.COCO_EVAL_BACKEND`` of --config, else pycocotools).

VOC: the results are a folder of the devkit's ``comp4_det_<image set>_<class>.txt`` files (what
VOCEvaluator writes; lines ``<image id> <score> <x1> <y1> <x2> <y2>`` in 1-based pixels); a class
without a file has AP 0. Prints mAP at IoU 0.5 with the 11-point and the area metric (``--metric``,
default ``TEST.VOC_METRIC``, comes first), AP over IoU 0.50:0.95, AP75 and per-class AP.

With ``--config`` the kind follows the dataset's ``evaluator_type``. Every ground-truth image is
evaluated (``--subset``: only the images that appear in the results).

Localization: the files have the header ``ImageId,PredictionString``; the solution lists every box
``wnid x1 y1 x2 y2`` of each image, the submission up to five guesses ``wnid x1 y1 x2 y2`` per image
(best first; later ones are ignored with a warning), the optional GT-class submission one box for the
ground-truth class per image (what LocalizationEvaluator writes as ``loc_submission.csv`` and
``loc_gt_class_submission.csv``). Prints top-1/top-5 classification and localization error and, with
--gt-class-submission, the GT-class localization error, in percent of the solution's images (an image
missing from a submission is an error).
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
from detres.data.detection.voc import VOC_CLASSES, load_voc_instances  # noqa: E402
from detres.evaluation.coco_evaluation import COCO_EVAL_BACKENDS, evaluate_coco, format_results_table  # noqa: E402
from detres.evaluation.localization_evaluation import (  # noqa: E402
    format_localization_table,
    localization_errors,
    read_gt_class_submission,
    read_solution,
    read_submission,
)
from detres.evaluation.voc_evaluation import (  # noqa: E402
    VOC_METRICS,
    evaluate_voc,
    format_voc_table,
    read_voc_results,
)
from detres.utils.file_io import WriteError, atomic_write  # noqa: E402


LOCALIZATION_ARGS = ("solution", "submission", "gt_class_submission")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("detection", "localization"), default="detection",
                        help="what the results are (default: detection)")
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--dataset-json", help="COCO instances json of the ground truth")
    gt.add_argument("--voc-root", help="a VOCdevkit year folder (e.g. VOCdevkit/VOC2007) holding the ground truth")
    gt.add_argument("--config", help="a detres config; the ground truth is --dataset's")
    parser.add_argument("--dataset", help="registered dataset name (with --config)")
    parser.add_argument("--image-set", default="test", help="VOC image set, ImageSets/Main/<name>.txt (default: test)")
    parser.add_argument("--metric", choices=VOC_METRICS,
                        help="VOC metric listed first (default: TEST.VOC_METRIC of --config, else 11point)")
    parser.add_argument("--results",
                        help="COCO: json list of detections (COCO results format); VOC: folder of comp4 files")
    parser.add_argument("--solution", help="localization: the ground-truth CSV (e.g. LOC_val_solution.csv)")
    parser.add_argument("--submission", help="localization: CSV of up to five 'wnid x1 y1 x2 y2' guesses per image")
    parser.add_argument("--gt-class-submission",
                        help="localization: CSV of one 'wnid x1 y1 x2 y2' box for the ground-truth class per image")
    parser.add_argument("--backend", choices=COCO_EVAL_BACKENDS,
                        help="COCO evaluation API (default: TEST.COCO_EVAL_BACKEND of --config, else pycocotools)")
    parser.add_argument("--subset", action="store_true",
                        help="evaluate only on the images that appear in the results (default: every image)")
    parser.add_argument("--output", help="also write the metrics as json to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (with --config)")
    args = parser.parse_args(argv)
    for name in ("dataset_json", "voc_root", "config", "dataset", "results", "metric", "backend", "subset", "opts",
                 "solution", "submission", "gt_class_submission"):
        if getattr(args, name) and (name in LOCALIZATION_ARGS) != (args.task == "localization"):
            flag = "KEY VALUE overrides" if name == "opts" else "--" + name.replace("_", "-")
            parser.error(f"{flag} {'needs' if name in LOCALIZATION_ARGS else 'is not for'} --task localization")
    if args.task == "localization":
        if not args.solution or not args.submission:
            parser.error("--task localization needs --solution and --submission")
        return args
    if not (args.dataset_json or args.voc_root or args.config):
        parser.error("one of the arguments --dataset-json --voc-root --config is required")
    if not args.results:
        parser.error("the following arguments are required: --results")
    if args.config and not args.dataset:
        parser.error("--config needs --dataset NAME")
    if (args.dataset or args.opts) and not args.config:
        parser.error("--dataset and KEY VALUE overrides need --config")
    if args.dataset_json and args.metric:
        parser.error("--metric is for VOC ground truth")
    if args.voc_root and args.backend:
        parser.error("--backend is for COCO ground truth")
    return args


def read_coco_results(path: str) -> list:
    try:
        with open(path) as f:
            results = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"results file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid json file: {e}") from None
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a json list of detections, got {type(results).__name__}")
    return results


def run_coco(args: argparse.Namespace, json_file: str, backend: str) -> dict:
    coco_gt = load_coco_api(json_file)
    results = read_coco_results(args.results)
    img_ids = {r["image_id"] for r in results} if args.subset else None
    metrics = evaluate_coco(coco_gt, results, img_ids=img_ids, source=args.results, backend=backend)
    print(format_results_table(metrics))
    return metrics


def run_voc(args: argparse.Namespace, dirname: str, image_set: str, metric: str) -> dict:
    records = load_voc_instances(dirname, image_set, VOC_CLASSES)
    detections = read_voc_results(args.results, VOC_CLASSES, image_set)
    if args.subset:
        seen = {i for d in detections for i in d.image_ids}
        records = [r for r in records if r["image_id"] in seen]
    metrics = evaluate_voc(records, detections, VOC_CLASSES, metric, source=args.results)
    print(format_voc_table(metrics))
    return metrics


def run_localization(args: argparse.Namespace) -> dict:
    solution = read_solution(args.solution)
    submission = read_submission(args.submission, known_ids=solution)
    gt_boxes = read_gt_class_submission(args.gt_class_submission, solution) if args.gt_class_submission else None
    metrics = localization_errors(solution, submission, gt_boxes, source=args.submission)
    print(format_localization_table(metrics))
    return metrics


def run(args: argparse.Namespace) -> dict:
    if args.task == "localization":
        metrics = run_localization(args)
    elif args.voc_root:
        metrics = run_voc(args, args.voc_root, args.image_set, args.metric or VOC_METRICS[0])
    elif args.dataset_json:
        metrics = run_coco(args, args.dataset_json, args.backend or "pycocotools")
    else:
        cfg = load_config(args.config, args.opts)
        register_from_config(cfg)
        meta = MetadataCatalog.get(args.dataset)
        if getattr(meta, "evaluator_type", None) == "voc":
            metrics = run_voc(args, meta.dirname, meta.split, args.metric or cfg.TEST.VOC_METRIC)
        elif getattr(meta, "json_file", None):
            metrics = run_coco(args, meta.json_file, args.backend or cfg.TEST.COCO_EVAL_BACKEND)
        else:
            raise ValueError(f"dataset {args.dataset!r} is neither a registered COCO-format dataset (no json_file) "
                             "nor a VOC dataset")
    if args.output:
        text = json.dumps({"localization" if args.task == "localization" else "bbox": metrics}, indent=2) + "\n"
        atomic_write(args.output, lambda f: f.write(text.encode()))
    return metrics


def main(argv: Optional[List[str]] = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, WriteError) as e:
        sys.exit(f"evaluate.py: error: {e}")


if __name__ == "__main__":
    main()
