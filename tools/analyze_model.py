#!/usr/bin/env python
"""Parameters and FLOPs (conv + fc multiply-adds, fvcore) of a detres model.

    python tools/analyze_model.py --backbone resnet50 [--input-size 224] [--json]
    python tools/analyze_model.py --config configs/X.yaml [KEY VALUE ...] [--input-size 600]
    python tools/analyze_model.py --table paper [--json]

``--config`` analyses the config's meta-architecture when it is registered, else its backbone
(a detector's FLOPs depend on the proposals kept for the random analysis image).
``--table paper`` compares every ImageNet depth's GFLOPs and every CIFAR depth's parameters with
the paper's numbers. See :mod:`detres.utils.analysis` for what is counted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.utils import analysis  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--backbone", help="a backbone name, e.g. resnet50, plain34, cifar_resnet110")
    what.add_argument("--config", help="a detres config file")
    what.add_argument("--table", choices=["paper"], help="the paper's complexity table vs detres")
    parser.add_argument("--input-size", type=int, default=None, help="square input side (224; 32 for CIFAR)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (with --config)")
    args = parser.parse_args(argv)
    if args.opts and not args.config:
        parser.error(f"KEY VALUE overrides need --config, got {args.opts}")
    return args


def _print_result(result: dict) -> None:
    print(f"model: {result['model']}  input: {result['input_size']}x{result['input_size']}")
    print(f"parameters: {result['params']:,} ({result['params'] / 1e6:.3f} M; trainable {result['trainable_params']:,})")
    print(f"GFLOPs (multiply-adds of conv + fc): {result['gflops']:.3f}")
    for name, gflops in result["gflops_by_module"].items():
        print(f"  {name:<24}{gflops:>10.4f}")


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ValueError as e:  # unknown backbone names, bad config keys or values
        sys.exit(f"analyze_model.py: error: {e}")


def run(args: argparse.Namespace) -> None:
    if args.table:
        rows = analysis.paper_table(args.input_size or 224)
        print(json.dumps(rows, indent=2) if args.json else analysis.format_paper_table(rows))
        return
    if args.backbone:
        result = analysis.analyze_backbone(args.backbone, args.input_size)
    else:
        from detres.config import load_config

        result = analysis.analyze_config(load_config(args.config, args.opts), args.input_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_result(result)


if __name__ == "__main__":
    main()
