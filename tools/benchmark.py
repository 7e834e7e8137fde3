#!/usr/bin/env python
"""Speed of a detres detector next to torchvision's ``fasterrcnn_resnet50_fpn``, measured in one run.

    python tools/benchmark.py --config configs/quickstart.yaml
    python tools/benchmark.py --config configs/detection/faster_rcnn_R_50_C4_1x.yaml --images 4 \
        MODEL.WEIGHTS "" DATASETS.TEST '("synthetic_det_val",)' INPUT.MIN_SIZE_TEST 800
    python tools/benchmark.py --config configs/quickstart.yaml --extras MODEL.WEIGHTS model_final.pth \
        TEST.MULTI_SCALE.SIZES "(53, 107, 160, 213, 267)"

Both models see the same images: the first ``--images`` of the config's first test dataset, resized
by detres's test-time mapper (so torchvision's own resize is set to the same sizes and is a no-op).
Inference is timed per image (batch of 1, ``torch.inference_mode``); training per iteration on
``SOLVER.IMS_PER_BATCH`` of those images with their ground truth (forward, backward, SGD step).
Each figure is the median of ``--repeats`` timings after ``--warmup`` untimed ones; ``--device cuda``
and ``--autocast bf16`` measure on a GPU in bfloat16. torchvision's model is randomly initialised
(nothing is downloaded); detres's uses ``MODEL.WEIGHTS`` when set. Random models get batch-norm
statistics computed on the benchmark images (``calibrate_norm_statistics``) so that their RPNs
propose a realistic number of regions, and training steps use lr 0 so that they cannot diverge
while they are timed.

``--options`` times detres alone with each speed option added in turn to the plain path (no option):
batch norm folded into the convolutions (``MODEL.FOLD_NORM``), channels-last memory
(``MODEL.CHANNELS_LAST``), RoIAlign as weighted row sums on CPU (``MODEL.CPU_ROI_ALIGN``), res5's
opening 1x1 convolutions run before pooling (``MODEL.PROJECT_BEFORE_POOLING``; these four are the
defaults), then ``torch.compile`` (``MODEL.COMPILE``) or bfloat16 autocast (``TEST.AMP`` /
``SOLVER.AMP``) on top of them: inference s/image and training s/iteration, the ratio to plain, and
how many of the plain path's detections each option reproduces (same class, IoU > 0.99, score within
1e-3).

``--data`` times the training data loader (``DATALOADER.NUM_WORKERS`` workers, and the main process
alone, i.e. one worker's throughput) in images/s next to the model's training images/s, so that
one sees whether the loader can keep up.

``--extras`` times instead the test-time extras of the paper's COCO system on the same detres model
and images, each alone and all together (box refinement, multi-scale testing with the config's
``TEST.MULTI_SCALE`` pyramid, flip), next to the plain model: seconds per image and the ratio to plain.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.build import build_test_loader, register_from_config  # noqa: E402
from detres.engine.trainer import amp_dtype, autocast  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.modeling.test_time import build_test_time_model  # noqa: E402
from detres.modeling.weight_import import load_weights  # noqa: E402


def median_seconds(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load_inputs(cfg, count: int) -> List[dict]:
    """The first ``count`` images of ``DATASETS.TEST[0]`` after test-time resizing, with ground truth
    scaled to the resized image (the training benchmark needs boxes)."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("the benchmark reads its images from DATASETS.TEST[0]; the config names none")
    inputs: List[dict] = []
    for batch in build_test_loader(cfg, cfg.DATASETS.TEST[0]):
        for x in batch:
            if len(x.get("gt_boxes", ())) and len(inputs) < count:
                inputs.append(x)
        if len(inputs) == count:
            return inputs
    raise ValueError(f"{cfg.DATASETS.TEST[0]} has fewer than {count} images with boxes")


def calibrate_norm_statistics(model: torch.nn.Module, model_inputs: tuple) -> None:
    """For randomly initialised models: set every batch-norm layer's running mean and variance from
    ``model(*model_inputs)`` (layer by layer, as the forward pass reaches it), as if its statistics had
    been computed on data. Unnormalised random activations grow through the trunk until the RPN
    proposes a handful of degenerate boxes; calibrated, it proposes as many regions as a trained one."""
    def set_statistics(module: torch.nn.Module, args: tuple) -> None:
        x = args[0].float()
        module.running_mean.copy_(x.mean((0, 2, 3)))
        module.running_var.copy_(x.var((0, 2, 3)))

    layers = [m for m in model.modules() if isinstance(getattr(m, "running_var", None), torch.Tensor)]
    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    # A norm folded into its convolution never runs: unfold while calibrating.
    folded = [m for m in model.modules() if getattr(m, "fold_norm", False)]
    for m in folded:
        m.fold_norm = False
    model.eval()
    try:
        with torch.inference_mode():
            model(*model_inputs)
    finally:
        for handle in handles:
            handle.remove()
        for m in folded:
            m.fold_norm = True


def torchvision_inputs(inputs: List[dict], input_format: str) -> List[torch.Tensor]:
    """RGB float images in [0, 1], as torchvision's detection models expect."""
    images = [x["image"].float() / 255 for x in inputs]
    return [im.flip(0) if input_format == "BGR" else im for im in images]


def benchmark(cfg, args) -> Dict[str, Dict[str, float]]:
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    inputs = load_inputs(cfg, max(args.images, cfg.SOLVER.IMS_PER_BATCH))
    test_inputs, train_inputs = inputs[: args.images], inputs[: cfg.SOLVER.IMS_PER_BATCH]
    height, width = test_inputs[0]["image"].shape[-2:]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{len(test_inputs)} test images of {cfg.DATASETS.TEST[0]} at about {height}x{width} px; "
          f"training batches of {len(train_inputs)}; {device} ({where}), {args.autocast if dtype else 'fp32'}")

    detres_model = build_model(cfg).to(device)
    tv_model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
        min_size=cfg.INPUT.MIN_SIZE_TEST, max_size=cfg.INPUT.MAX_SIZE_TEST).to(device)
    tv_images = [im.to(device) for im in torchvision_inputs(inputs, cfg.INPUT.FORMAT)]
    calibrate_norm_statistics(tv_model, (tv_images,))
    if cfg.MODEL.WEIGHTS:
        load_weights(detres_model, cfg.MODEL.WEIGHTS)
    else:
        calibrate_norm_statistics(detres_model, (inputs,))
    tv_targets = [{"boxes": x["gt_boxes"].to(device), "labels": x["gt_classes"].to(device) + 1} for x in inputs]

    def infer(model, images) -> Callable[[], float]:
        def run() -> float:
            model.eval()
            with torch.inference_mode(), autocast():
                return median_seconds(lambda: [model(im) for im in images], args.warmup, args.repeats, sync) / len(images)
        return run

    def train(model, step_inputs: Callable[[], tuple]) -> Callable[[], float]:
        def run() -> float:
            model.train()
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)

            def step() -> None:
                with autocast():
                    losses = model(*step_inputs())
                optimizer.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                optimizer.step()
            return median_seconds(step, args.warmup, args.repeats, sync)
        return run

    n = len(train_inputs)
    timers = {
        "inference s/image": (infer(detres_model, [[x] for x in test_inputs]),
                              infer(tv_model, [[im] for im in tv_images[: len(test_inputs)]])),
        "training s/iter": (train(detres_model, lambda: (train_inputs,)),
                            train(tv_model, lambda: (tv_images[:n], tv_targets[:n]))),
    }
    results = {}
    for name, (ours, theirs) in timers.items():
        if args.skip_training and name.startswith("training"):
            continue
        detres_s, tv_s = ours(), theirs()
        results[name] = {"detres": detres_s, "torchvision_fasterrcnn_resnet50_fpn": tv_s, "ratio": tv_s / detres_s}
    return results


# Every speed option off: the plain path the options are measured (and tested) against.
NO_SPEED_OPTIONS = ["MODEL.FOLD_NORM", "False", "MODEL.CHANNELS_LAST", "False",
                    "MODEL.CPU_ROI_ALIGN", "torchvision", "MODEL.PROJECT_BEFORE_POOLING", "False"]
_FOLD = NO_SPEED_OPTIONS + ["MODEL.FOLD_NORM", "True"]
_CHANNELS_LAST = _FOLD + ["MODEL.CHANNELS_LAST", "True"]
_EMBEDDING_BAG = _CHANNELS_LAST + ["MODEL.CPU_ROI_ALIGN", "embedding_bag"]
_ALL = _EMBEDDING_BAG + ["MODEL.PROJECT_BEFORE_POOLING", "True"]  # the shipped defaults
SPEED_OPTIONS = {
    "plain (no option)": NO_SPEED_OPTIONS,
    "+ fold norm": _FOLD,
    "+ channels-last": _CHANNELS_LAST,
    "+ embedding-bag RoIAlign": _EMBEDDING_BAG,
    "+ project before pooling": _ALL,
    "+ torch.compile": _ALL + ["MODEL.COMPILE", "default"],
    "+ bf16 autocast": _ALL + ["TEST.AMP.ENABLED", "True", "SOLVER.AMP.ENABLED", "True"],
}


def benchmark_options(cfg, args) -> Dict[str, Dict[str, float]]:
    """Inference s/image and training s/iteration of the plain path and of each speed option, same
    weights and images; ``ratio``: time relative to plain; ``matched``: fraction of the plain path's
    detections reproduced (minimum over the images)."""
    from tools.d2_golden_parity import matched_fraction

    inputs = load_inputs(cfg, max(args.images, cfg.SOLVER.IMS_PER_BATCH))
    test_inputs, train_inputs = inputs[: args.images], inputs[: cfg.SOLVER.IMS_PER_BATCH]
    device = torch.device(args.device)
    base = build_model(cfg).to(device)
    if cfg.MODEL.WEIGHTS:
        load_weights(base, cfg.MODEL.WEIGHTS)
    else:
        calibrate_norm_statistics(base, (inputs,))
    results: Dict[str, Dict[str, float]] = {}
    reference = None
    for name, opts in SPEED_OPTIONS.items():
        if args.skip_compile and "MODEL.COMPILE" in opts:
            continue
        row_cfg = cfg.clone()
        row_cfg.defrost()
        row_cfg.merge_from_list(opts)
        model = build_model(row_cfg).to(device)
        model.load_state_dict(base.state_dict())
        model.eval()
        with torch.inference_mode(), autocast(amp_dtype(row_cfg.TEST.AMP, device, "TEST.AMP"), device):
            outputs = [model([x])[0] for x in test_inputs]
            seconds = median_seconds(lambda: [model([x]) for x in test_inputs], args.warmup, args.repeats,
                                     _sync(device)) / len(test_inputs)
        reference = reference or outputs
        matched = min(matched_fraction(r["boxes"], o["boxes"].float(), r["classes"], o["classes"], r["scores"],
                                       o["scores"].float()) for r, o in zip(reference, outputs))
        row = {"inference s/image": seconds, "matched": matched}
        if not args.skip_training:
            row["training s/iter"] = time_training(model, train_inputs, amp_dtype(row_cfg.SOLVER.AMP, device), args)
        plain = results.get("plain (no option)", row)
        row.update({f"{k} ratio": row[k] / plain[k] for k in ("inference s/image", "training s/iter") if k in row})
        results[name] = row
    return results


def time_training(model: torch.nn.Module, batch: List[dict], dtype, args) -> float:
    """Median seconds of a training iteration (forward, backward, SGD step with lr 0) on ``batch``."""
    device = next(model.parameters()).device
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)

    def step() -> None:
        with autocast(dtype, device):
            losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
    return median_seconds(step, args.warmup, args.repeats, _sync(device))


def benchmark_data(cfg, args) -> Dict[str, float]:
    """Training loader images/s with ``DATALOADER.NUM_WORKERS`` workers and in the main process (one
    worker's throughput), next to the model's training images/s on batches of the same loader."""
    from detres.data.build import build_train_loader

    def images_per_second(loader_cfg) -> float:
        batches = iter(build_train_loader(loader_cfg))
        for _ in range(args.warmup):
            next(batches)
        start, images = time.perf_counter(), 0
        for _ in range(args.batches):
            images += len(next(batches))
        return images / (time.perf_counter() - start)

    workers = cfg.DATALOADER.NUM_WORKERS
    single = cfg.clone()
    single.defrost()
    single.DATALOADER.NUM_WORKERS = 0
    results = {f"loader, {workers} workers": images_per_second(cfg) if workers else None,
               "loader, main process (one worker)": images_per_second(single)}
    model = build_model(cfg)
    batch = next(iter(build_train_loader(single)))
    seconds = time_training(model, batch, amp_dtype(cfg.SOLVER.AMP, torch.device(args.device)), args)
    results["model training"] = len(batch) / seconds
    return {k: v for k, v in results.items() if v is not None}


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


EXTRAS = {
    "+ box refinement": ["MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED", "True"],
    "+ multi-scale testing": ["TEST.MULTI_SCALE.ENABLED", "True"],
    "+ flip testing": ["TEST.FLIP", "True"],
}


def benchmark_extras(cfg, args) -> Dict[str, Dict[str, float]]:
    """Inference s/image of the plain detector and with each test-time extra (and all of them), same
    weights and images; ``ratio`` is the time relative to the plain detector."""
    inputs = load_inputs(cfg, args.images)
    base = build_model(cfg).to(args.device)
    if cfg.MODEL.WEIGHTS:
        load_weights(base, cfg.MODEL.WEIGHTS)
    else:
        calibrate_norm_statistics(base, (inputs,))
    rows = {"plain": [], **EXTRAS, "all of them": [o for opts in EXTRAS.values() for o in opts]}
    results = {}
    for name, opts in rows.items():
        row_cfg = cfg.clone()
        row_cfg.defrost()
        row_cfg.merge_from_list(opts)
        model = build_model(row_cfg).to(args.device)
        model.load_state_dict(base.state_dict())
        detector = build_test_time_model(row_cfg, model.eval())
        with torch.inference_mode():
            sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
            seconds = median_seconds(lambda: [detector([x]) for x in inputs], args.warmup, args.repeats,
                                     sync) / len(inputs)
        results[name] = {"s/image": seconds, "ratio": seconds / results["plain"]["s/image"] if results else 1.0}
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", dest="config_file", required=True, help="detres detection config")
    parser.add_argument("--images", type=int, default=8, help="test images (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--autocast", choices=["none", "bf16", "fp16"], default="none",
                        help="run both models under torch.autocast with this dtype (default: fp32)")
    parser.add_argument("--skip-training", action="store_true", help="time inference only")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--extras", action="store_true",
                        help="time the paper's test-time extras (refinement, multi-scale, flip) against the plain model")
    parser.add_argument("--options", action="store_true",
                        help="time each speed option (fold norm, channels-last, compile, bf16) against the plain path")
    parser.add_argument("--skip-compile", action="store_true",
                        help="--options without the torch.compile row (compiling takes minutes on a CPU)")
    parser.add_argument("--data", action="store_true", help="time the training loader next to the model")
    parser.add_argument("--batches", type=int, default=20, help="--data: timed loader batches (default 20)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config_file, args.opts)
        if args.extras and args.autocast != "none":
            raise ConfigError("--extras times the extras in float32; drop --autocast")
        if cfg.MODEL.META_ARCHITECTURE != "FasterRCNN" and not args.data:
            raise ConfigError(f"{args.config_file}: the benchmark compares detectors; "
                              f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE}")
        cfg.defrost()
        cfg.MODEL.DEVICE, cfg.TEST.IMS_PER_BATCH = args.device, 1
        if not args.data:
            cfg.DATALOADER.NUM_WORKERS = 0
        cfg.freeze()
        register_from_config(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    torch.manual_seed(0)
    if sum((args.extras, args.options, args.data)) > 1:
        parser.error("choose one of --extras, --options, --data")
    if args.data:
        results = benchmark_data(cfg, args)
    elif args.options:
        results = benchmark_options(cfg, args)
    else:
        results = benchmark_extras(cfg, args) if args.extras else benchmark(cfg, args)
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.data:
        for name, images_per_s in results.items():
            print(f"{name:36s} {images_per_s:8.1f} images/s")
    elif args.options:
        print(f"{'':24s} {'inference s/img':>15s} {'/ plain':>8s} {'training s/it':>14s} {'/ plain':>8s} "
              f"{'same detections':>16s}")
        for name, r in results.items():
            train = (f"{r['training s/iter']:14.4f} {r['training s/iter ratio']:7.2f}x" if "training s/iter" in r
                     else f"{'-':>14s} {'-':>8s}")
            print(f"{name:24s} {r['inference s/image']:15.4f} {r['inference s/image ratio']:7.2f}x {train} "
                  f"{r['matched']:15.1%}")
    elif args.extras:
        print(f"{'inference':24s} {'s/image':>10s} {'/ plain':>8s}")
        for name, r in results.items():
            print(f"{name:24s} {r['s/image']:10.4f} {r['ratio']:7.2f}x")
    else:
        print(f"{'':20s} {'detres':>10s} {'torchvision R50-FPN':>20s} {'torchvision / detres':>21s}")
        for name, r in results.items():
            print(f"{name:20s} {r['detres']:10.4f} {r['torchvision_fasterrcnn_resnet50_fpn']:20.4f} {r['ratio']:20.2f}x")

if __name__ == "__main__":
    main()
