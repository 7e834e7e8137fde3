#!/usr/bin/env python
"""Download CIFAR-10 (python version, sha256-verified) and unpack it to <root>/cifar-10-batches-py.

    python datasets/prepare_cifar10.py [--root DIR]    # default: $DETRES_DATASETS or ./datasets
"""
import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.data.classification.datasets import download_cifar10, load_cifar10  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("DETRES_DATASETS") or "datasets")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = download_cifar10(args.root)
    counts = {split: len(load_cifar10(str(folder), split)) for split in ("train", "test")}
    print(f"CIFAR-10 ready in {folder}: {counts['train']} training and {counts['test']} test images")


if __name__ == "__main__":
    main()
