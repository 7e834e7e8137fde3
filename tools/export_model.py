#!/usr/bin/env python
"""Export a classifier, a backbone or a C4 detector to TorchScript and/or ONNX, then check the files.

    python tools/export_model.py --model resnet50 --weights torchvision://resnet50 --output out/
    python tools/export_model.py --backbone resnet101 --features res4 --format onnx --output out/
    python tools/export_model.py --config configs/frcnn_r50_coco.yaml --weights model.pth --output out/ [KEY VALUE ...]

Writes ``<output>/<name>.pt`` (TorchScript) and ``<output>/<name>.onnx`` (ONNX opset 17), ``<name>``
being the model name or the config's file name. Inputs and outputs:

* ``--model``: ``images`` ``(N, 3, H, W)`` normalised float (``detres.create_model``'s input) -> ``logits`` ``(N, K)``.
* ``--backbone``: ``images`` -> one output per ``--features`` name (default ``res4``), ``(N, C, h, w)``.
* ``--config`` (a C4 Faster R-CNN): ``image`` ``(3, H, W)`` float32 in [0, 255], ``INPUT.FORMAT`` order,
  already resized to the test size, and ``original_size`` ``(2,)`` int64 (height, width) -> ``boxes``
  ``(D, 4)`` XYXY in original pixels, ``scores`` ``(D,)``, ``classes`` ``(D,)`` int64. NMS (RPN and per
  class) is inside the graph (ONNX ``NonMaxSuppression``): the outputs are final detections.

Image sizes (and N) are dynamic. Each file is run on the example input (``--size``, random pixels) and
on one of another size -- TorchScript with ``torch.jit.load`` (a detector needs ``import torchvision``
first), ONNX with onnxruntime when installed -- and the largest absolute difference to the eager model
is printed; the command fails when it exceeds ``--atol`` (or a detector's detection count differs).
``KEY VALUE`` pairs are config overrides with ``--config`` and lower-case ``create_model`` /
``create_backbone`` options otherwise (e.g. ``res2_out_channels 32``); they come last, after ``--``
when they follow ``--format`` or ``--features`` (``--format onnx -- MODEL.WEIGHTS model.pth``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from detres.config import ConfigError  # noqa: E402
from detres.export import (  # noqa: E402
    FORMATS,
    ExportTarget,
    backbone_target,
    classifier_target,
    detector_target,
    max_abs_difference,
    onnxruntime_available,
    run_exported,
)
from detres.export.formats import Inputs  # noqa: E402

Size = Tuple[int, int]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="a C4 Faster R-CNN config: a YAML path or a shipped name, e.g. quickstart")
    what.add_argument("--backbone", help="a backbone name (detres.list_backbones()), e.g. resnet101")
    what.add_argument("--model", help="a classifier name (detres.list_backbones()), e.g. resnet50")
    parser.add_argument("--format", nargs="+", choices=list(FORMATS), default=list(FORMATS), help="formats to write")
    parser.add_argument("--output", required=True, help="folder for the exported files")
    parser.add_argument("--weights", help="weights (path, URL or short scheme); with --config: MODEL.WEIGHTS")
    parser.add_argument("--features", nargs="+", default=["res4"], help="backbone outputs (with --backbone)")
    parser.add_argument("--num-classes", type=int, help="classifier outputs (with --model; default 1000)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="example input size (default: 224 x 224, 32 x 32 for CIFAR, the test size for --config)")
    parser.add_argument("--atol", type=float, default=1e-3, help="largest accepted |exported - eager|")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (see above)")
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        parser.error(f"overrides come as KEY VALUE pairs, got {args.opts}")
    return args


def _options(opts: Sequence[str]) -> Dict[str, Any]:
    """``["res2_out_channels", "32"]`` -> ``{"res2_out_channels": 32}`` (values read as YAML)."""
    return {key: yaml.safe_load(value) for key, value in zip(opts[::2], opts[1::2])}


def build_target(args: argparse.Namespace) -> Tuple[ExportTarget, str, Size]:
    """The target to export, the files' base name and the default example size."""
    import detres

    if args.config:
        from detres.engine.predictor import detector_config

        cfg = detector_config(args.config, args.weights, ["MODEL.DEVICE", "cpu", *args.opts])
        test_time = {"TEST.MULTI_SCALE.ENABLED": cfg.TEST.MULTI_SCALE.ENABLED, "TEST.FLIP": cfg.TEST.FLIP,
                     "TEST.ENSEMBLE": cfg.TEST.ENSEMBLE}
        if any(test_time.values()):
            on = ", ".join(key for key, value in test_time.items() if value)
            raise ValueError(f"export covers the single-scale detector; turn off {on} to export it without them")
        height = cfg.INPUT.MIN_SIZE_TEST
        size = (height, min(height * 4 // 3, cfg.INPUT.MAX_SIZE_TEST))
        return detector_target(detres.create_detector(cfg)), Path(args.config).stem, size
    name = args.model or args.backbone
    side = 32 if name.startswith("cifar_") else 224
    if args.model:
        extra = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = detres.create_model(name, weights=args.weights, **extra, **_options(args.opts))
        return classifier_target(model), name, (side, side)
    backbone = detres.create_backbone(name, args.features, args.weights, **_options(args.opts))
    return backbone_target(backbone), name, (side, side)


def example_inputs(target: ExportTarget, size: Size, batch: int, seed: int) -> Inputs:
    """Random inputs of ``size`` (a batch of ``batch`` normalised images, or one detector image in [0, 255])."""
    g = torch.Generator().manual_seed(seed)
    if target.kind == "detector":
        image = torch.randint(0, 256, (3, *size), generator=g).float()
        return image, torch.tensor([size[0] * 5 // 4, size[1] * 5 // 4])  # originals larger than the test size
    return (torch.randn(batch, 3, *size, generator=g),)


def run(args: argparse.Namespace) -> List[str]:
    """Export and check; returns the failed checks (one line each)."""
    target, stem, default_size = build_target(args)
    height, width = args.size or default_size
    example = example_inputs(target, (height, width), batch=2, seed=0)
    other = example_inputs(target, (height - height // 4, width + width // 4), batch=3, seed=1)
    failures = []
    for fmt in args.format:
        path = target.save(fmt, example, Path(args.output) / f"{stem}{FORMATS[fmt]}")
        if fmt == "onnx" and not onnxruntime_available():
            print(f"wrote {path} ({fmt}); not run: onnxruntime is not installed (pip install onnxruntime)")
            continue
        results = []
        for inputs in (example, other):
            expected = target.reference(inputs)
            diff = max_abs_difference(expected, run_exported(path, inputs))
            results.append(_describe(diff, inputs, expected, target))
            if not diff <= args.atol:
                failures.append(f"{path} differs from the eager model ({results[-1]}; --atol {args.atol})")
        print(f"wrote {path} ({fmt}); max |exported - eager|: {'; '.join(results)}")
    return failures


def _describe(diff: float, inputs: Inputs, expected: List[torch.Tensor], target: ExportTarget) -> str:
    """``"3.05e-05 at 600x800"``, with the number of detections for a detector."""
    size = "x".join(str(s) for s in inputs[0].shape[-2:])
    text = f"{diff:.2e} at {size}" if diff != float("inf") else f"outputs of other shapes at {size}"
    return text + (f" ({len(expected[0])} detections)" if target.kind == "detector" else "")


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        failures = run(args)
    except (ConfigError, ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"export_model.py: error: {e}")
    if failures:
        sys.exit(f"export_model.py: error: {failures[0]}")


if __name__ == "__main__":
    main()
