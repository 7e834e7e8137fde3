#!/usr/bin/env python
"""Standard deviations of the 3x3 layers' responses of trained models (He et al. 2015, Fig. 7).

    python tools/analyze_responses.py \\
        --models configs/classification/cifar_plain20.yaml output/cifar_plain20/model_final.pth \\
                 configs/classification/cifar_resnet20.yaml output/cifar_resnet20/model_final.pth \\
        --labels plain-20 ResNet-20 --dataset cifar10_test --images 1000 --output output/responses

A response is the output of a 3x3 layer after BN, before the shortcut addition and the ReLU; its std
is taken over all elements of the responses to the first ``--images`` images of ``--dataset`` (test
pre-processing of each model's config). Writes ``responses.png`` -- top: std in layer order, bottom:
the same stds sorted in descending order -- and ``responses.json`` (``{label: [[layer, std], ...]}``).
``KEY VALUE`` overrides after ``--`` apply to every config (e.g. ``DATASETS.ROOT /data``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.utils.analysis import layer_responses  # noqa: E402

Responses = List[Tuple[str, float]]


def _image_batches(cfg, dataset: str, max_images: int) -> Iterator[list]:
    """The test loader's ``List[dict]`` batches of ``dataset``, cut after ``max_images`` images."""
    from detres.data.build import build_test_loader

    left = max_images
    for batch in build_test_loader(cfg, dataset):
        if left <= 0:
            return
        yield batch[:left]
        left -= len(batch)


def model_responses(config: str, weights: str, dataset: str, max_images: int,
                    opts: Sequence[str] = ()) -> Responses:
    """``layer_responses`` of the model of ``config`` with ``weights`` (a path, URL or scheme) on CPU."""
    from detres.config import load_config
    from detres.engine.checkpoint import Checkpointer
    from detres.modeling.meta_arch.build import build_model

    cfg = load_config(config, [*opts, "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    # the class layers must fit too: responses of a partly random network would mean nothing
    Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False).resume_or_load(weights, resume=False,
                                                                           require_class_layers=True)
    return layer_responses(model, _image_batches(cfg, dataset, max_images))


def plot_responses(responses: Dict[str, Responses], output: str) -> None:
    """Fig. 7: the stds of each labelled model in layer order (top) and sorted by magnitude (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_layer, by_size) = plt.subplots(2, 1, figsize=(7, 6), dpi=120)
    for label, layers in responses.items():
        stds = [std for _, std in layers]
        index = range(1, len(stds) + 1)
        by_layer.plot(index, stds, marker=".", linewidth=1.0, label=label)
        by_size.plot(index, sorted(stds, reverse=True), marker=".", linewidth=1.0, label=label)
    by_layer.set_xlabel("layer index (original)")
    by_size.set_xlabel("layer index (sorted by magnitude)")
    for ax in (by_layer, by_size):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("std of the 3x3 layers' responses (after BN, before addition and ReLU)", fontsize=10)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def analyze(models: Sequence[Tuple[str, str, str]], dataset: str, max_images: int, output_dir: str,
            opts: Sequence[str] = ()) -> Dict[str, Responses]:
    """``models``: ``(label, config, weights)`` triples. Writes ``responses.{png,json}`` into ``output_dir``."""
    results = {label: model_responses(cfg, weights, dataset, max_images, opts) for label, cfg, weights in models}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "responses.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_responses(results, str(out / "responses.png"))
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="CONFIG WEIGHTS", help="config/weights pairs")
    parser.add_argument("--labels", nargs="+", help="one label per model (default: the configs' file names)")
    parser.add_argument("--dataset", required=True, help="a registered dataset, e.g. cifar10_test, synthetic_cls_val")
    parser.add_argument("--images", type=int, default=1000, help="how many of its images to use")
    parser.add_argument("--output", required=True, help="folder for responses.png and responses.json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="-- KEY VALUE overrides for every config")
    args = parser.parse_args(argv)
    if len(args.models) % 2:
        parser.error(f"--models takes CONFIG WEIGHTS pairs, got {len(args.models)} values")
    pairs = list(zip(args.models[::2], args.models[1::2]))
    stems = [Path(cfg).stem for cfg, _ in pairs]  # train_net's copies are all "config": take the run folder
    labels = args.labels or [Path(cfg).parent.name if stems.count(Path(cfg).stem) > 1 else Path(cfg).stem
                             for cfg, _ in pairs]
    if len(labels) != len(pairs):
        parser.error(f"{len(pairs)} models but {len(labels)} labels")
    if len(set(labels)) != len(labels):
        parser.error(f"labels must differ, got {labels} (give --labels)")
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    models = [(label, cfg, weights) for label, (cfg, weights) in zip(labels, pairs)]
    try:
        results = analyze(models, args.dataset, args.images, args.output, opts)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        sys.exit(f"analyze_responses.py: error: {e}")
    for label, layers in results.items():
        stds = [std for _, std in layers]
        print(f"{label:<16} {len(stds)} layers, std mean {sum(stds) / len(stds):.3f}, "
              f"max {max(stds):.3f}, min {min(stds):.3f}")
    print(f"wrote {Path(args.output) / 'responses.png'} and responses.json")


if __name__ == "__main__":
    main()
