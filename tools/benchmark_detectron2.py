#!/usr/bin/env python
"""Detectron2 and detres side by side: the same R50-C4 weights, the same images, one process.

    python tools/benchmark_detectron2.py --detectron2 /path/to/detectron2-source [--size 600] \
        [--images 3] [--repeats 5] [--train-repeats 3] [--skip-training] [--variants plain,default]

Detectron2 is not a dependency of detres: point ``--detectron2`` at a source checkout (its C4 Faster
R-CNN runs on torchvision's ops, so nothing needs compiling) or install it in a scratch environment.
The tool builds Detectron2's full-width ResNet-50 C4 Faster R-CNN (its model-zoo settings: msra
stride-in-1x1 trunk, RPN on res4, ROIAlignV2 14x14, res5 per region), gives it random weights whose
frozen batch-norm statistics are calibrated on the images (so that the RPN proposes realistic boxes),
writes them as a model-zoo ``model_final.pkl`` and loads that file into detres
(``configs/detection/d2_R50_C4_golden.yaml`` at full width). The images are the first ``--images`` of
COCO (``--coco``: coco128's val2017 and instances json), resized once to shorter side ``--size``
(longer side at most 1000 for 600, 1333 otherwise) and fed as the same uint8 tensor to both.

Rows: inference s/image (batch of 1, 1000 test proposals, median of ``--repeats`` passes over the
images) and training s/iteration (the images as one batch with their COCO boxes, trainable BN,
nothing frozen, SGD with lr 0; median of ``--train-repeats``; the rows are timed in turn, round after
round, so that a changing background load affects them alike), for Detectron2 and each detres variant:
``plain`` (no speed option: ``tools.benchmark.NO_SPEED_OPTIONS``), ``default`` (the shipped settings),
``compile`` (+ MODEL.COMPILE default), ``bf16`` (+ bfloat16 autocast). Detections
of every variant are matched against Detectron2's (same class, IoU > 0.99, score within 1e-3; bf16
is reported, not held to that) and the peak resident memory of each inference is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from detres.config import load_config  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.modeling.weight_import import load_weights  # noqa: E402
from tools.benchmark import NO_SPEED_OPTIONS, calibrate_norm_statistics  # noqa: E402
from tools.d2_golden_parity import matched_fraction  # noqa: E402

DETRES_CONFIG = REPO_ROOT / "configs" / "detection" / "d2_R50_C4_golden.yaml"
DEFAULT_COCO = REPO_ROOT.parent / "shared" / "data" / "coco128"
FULL_WIDTH = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "64", "MODEL.RESNETS.RES2_OUT_CHANNELS", "256",
              "MODEL.RESNETS.WIDTH_PER_GROUP", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "1000", "MODEL.WEIGHTS", ""]
TRAINABLE_BN = ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"]
VARIANTS = {
    "plain": NO_SPEED_OPTIONS,
    "default": [],
    "compile": ["MODEL.COMPILE", "default"],
    "bf16": [],
}


def detectron2_model(norm: str, num_proposals: int) -> torch.nn.Module:
    """Detectron2's R50-C4 Faster R-CNN (model-zoo settings, full width) on CPU, random weights."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model as d2_build_model

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.NORM = 50, norm
    cfg.MODEL.BACKBONE.FREEZE_AT = 2 if norm == "FrozenBN" else 0
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = num_proposals
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80
    return d2_build_model(cfg)


def load_images(coco: Path, count: int, size: int) -> List[dict]:
    """The first ``count`` annotated COCO images, resized once: ``{"image": uint8 (3, h, w) BGR,
    "height", "width" (original), "gt_boxes" (K, 4) XYXY on the resized image, "gt_classes" (K,)}``."""
    data = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    category_index = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    boxes: Dict[int, list] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0) and a["bbox"][2] > 1 and a["bbox"][3] > 1:
            boxes.setdefault(a["image_id"], []).append(a)
    inputs = []
    for info in sorted(data["images"], key=lambda i: i["file_name"]):
        if info["id"] not in boxes:
            continue
        image = cv2.imread(str(coco / "val2017" / info["file_name"]), cv2.IMREAD_COLOR)
        h, w = image.shape[:2]
        scale = min(size / min(h, w), (1000 if size <= 600 else 1333) / max(h, w))
        nh, nw = int(round(h * scale)), int(round(w * scale))
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
        resized = F.interpolate(tensor, size=(nh, nw), mode="bilinear", align_corners=False)[0]
        anns = boxes[info["id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        inputs.append({
            "image": resized.round().clamp(0, 255).to(torch.uint8), "height": h, "width": w,
            "gt_boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) * torch.tensor([nw / w, nh / h] * 2),
            "gt_classes": torch.tensor([category_index[a["category_id"]] for a in anns]),
        })
        if len(inputs) == count:
            return inputs
    raise ValueError(f"{coco} has fewer than {count} annotated images")


def detectron2_training_inputs(inputs: List[dict]) -> List[dict]:
    from detectron2.structures import Boxes, Instances

    out = []
    for x in inputs:
        instances = Instances(tuple(x["image"].shape[-2:]))
        instances.gt_boxes, instances.gt_classes = Boxes(x["gt_boxes"]), x["gt_classes"]
        out.append({"image": x["image"], "height": x["height"], "width": x["width"], "instances": instances})
    return out


def write_model_zoo_pickle(model: torch.nn.Module, folder: str) -> str:
    path = str(Path(folder) / "model_final.pkl")
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "benchmark_detectron2"}, f)
    return path


def detections(model: torch.nn.Module, x: dict, detectron2: bool) -> Dict[str, torch.Tensor]:
    out = model([{k: x[k] for k in ("image", "height", "width")}])[0]
    if detectron2:
        inst = out["instances"]
        return {"boxes": inst.pred_boxes.tensor, "scores": inst.scores, "classes": inst.pred_classes}
    return out


@dataclass
class Row:
    """A model timed in one row of the table, with its autocast context (and training batch/optimizer)."""

    model: torch.nn.Module
    is_d2: bool
    autocast: Callable[[], contextlib.AbstractContextManager]
    batch: Optional[List[dict]] = None
    optimizer: Optional[torch.optim.Optimizer] = None


def _autocast(variant: str) -> Callable[[], contextlib.AbstractContextManager]:
    if variant == "bf16":
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def interleaved_medians(rows: Dict[str, Row], run: Callable[[Row], None], repeats: int) -> Dict[str, float]:
    """Median seconds of ``run(row)`` per row over ``repeats`` rounds; each round times every row once,
    in turn, so that a machine's changing load affects all rows alike."""
    times: Dict[str, List[float]] = {name: [] for name in rows}
    for _ in range(repeats):
        for name, row in rows.items():
            start = time.perf_counter()
            run(row)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def reset_peak_rss() -> None:
    """Restart the kernel's peak-resident-memory counter of this process (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory since the last :func:`reset_peak_rss` (Linux), else since the start."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args) -> Dict[str, Dict[str, float]]:
    torch.manual_seed(0)
    inputs = load_images(args.coco, args.images, args.size)
    print(f"{len(inputs)} COCO images at shorter side {args.size} "
          f"({', '.join('x'.join(map(str, x['image'].shape[-2:])) for x in inputs)}); "
          f"{torch.get_num_threads()} threads; 1000 test proposals")
    d2_eval = detectron2_model("FrozenBN", 1000).eval()
    calibrate_norm_statistics(d2_eval, ([{k: x[k] for k in ("image", "height", "width")} for x in inputs[:1]],))
    workdir = tempfile.mkdtemp(prefix="detres_bench_")
    weights = write_model_zoo_pickle(d2_eval, workdir)
    size_opts = ["INPUT.MIN_SIZE_TEST", str(args.size), "INPUT.MAX_SIZE_TEST", "1000" if args.size <= 600 else "1333"]

    def detres_model(opts: List[str]) -> torch.nn.Module:
        model = build_model(load_config(str(DETRES_CONFIG), FULL_WIDTH + size_opts + opts))
        load_weights(model, weights, strict="MODEL.RESNETS.NORM" not in opts)
        return model

    variants = [v.strip() for v in args.variants.split(",")]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown --variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    results: Dict[str, Dict[str, float]] = {}
    eval_rows = {"detectron2": Row(d2_eval, True, contextlib.nullcontext)}
    eval_rows.update({f"detres {v}": Row(detres_model(VARIANTS[v]).eval(), False, _autocast(v)) for v in variants})
    with torch.inference_mode():
        reference = [detections(d2_eval, x, True) for x in inputs]
        for name, row in eval_rows.items():
            reset_peak_rss()
            with row.autocast():
                outs = [detections(row.model, x, row.is_d2) for x in inputs]  # also the warm-up pass
            matched = min(matched_fraction(r["boxes"], o["boxes"].float(), r["classes"], o["classes"], r["scores"],
                                           o["scores"].float()) for r, o in zip(reference, outs))
            results[name] = {"detections matched": matched, "peak RSS MB": peak_rss_mb()}

        def infer(row: "Row") -> None:
            with row.autocast():
                for x in inputs:
                    detections(row.model, x, row.is_d2)

        for name, seconds in interleaved_medians(eval_rows, infer, args.repeats).items():
            results[name]["inference s/image"] = seconds / len(inputs)
    del eval_rows
    if not args.skip_training:
        from detectron2.utils.events import EventStorage

        d2_train = detectron2_model("BN", 1000)
        d2_train.load_state_dict(d2_eval.state_dict(), strict=False)
        train_rows = {"detectron2": Row(d2_train.train(), True, EventStorage, detectron2_training_inputs(inputs))}
        for v in variants:
            model = detres_model(VARIANTS[v] + TRAINABLE_BN).train()
            train_rows[f"detres {v}"] = Row(model, False, _autocast(v), inputs)

        def train_step(row: "Row") -> None:
            with row.autocast():
                losses = row.model(row.batch)
            row.optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            row.optimizer.step()

        for row in train_rows.values():
            row.optimizer = torch.optim.SGD([p for p in row.model.parameters() if p.requires_grad], lr=0.0,
                                            momentum=0.9)
            train_step(row)  # warm-up
        for name, seconds in interleaved_medians(train_rows, train_step, args.train_repeats).items():
            results[name]["training s/iter"] = seconds
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detectron2", type=Path, default=None,
                        help="a Detectron2 source checkout to import (default: an installed detectron2)")
    parser.add_argument("--coco", type=Path, default=DEFAULT_COCO, help="COCO folder with val2017/ and annotations/")
    parser.add_argument("--size", type=int, default=600, help="shorter side of the images (default 600)")
    parser.add_argument("--images", type=int, default=3, help="images (default 3); training uses them as one batch")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed inference passes over the images, after one untimed one (median; default 5)")
    parser.add_argument("--train-repeats", type=int, default=3,
                        help="timed training iterations, after one untimed one (median; default 3)")
    parser.add_argument("--variants", default="plain,default", help=f"detres variants, from {list(VARIANTS)}")
    parser.add_argument("--skip-training", action="store_true", help="time inference only")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.detectron2:
        sys.path.insert(0, str(args.detectron2))
    try:
        import detectron2  # noqa: F401
    except ImportError:
        parser.error("detectron2 cannot be imported: give --detectron2 /path/to/its/source (never a detres dependency)")
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    base = results["detectron2"]
    print(f"\n{'':22s} {'inference s/img':>15s} {'/ D2':>6s} {'training s/it':>14s} {'/ D2':>6s} "
          f"{'matched':>8s} {'peak RSS MB':>11s}")
    for name, r in results.items():
        train = r.get("training s/iter")
        train_cols = f"{train:14.3f} {train / base['training s/iter']:6.2f}" if train else f"{'-':>14s} {'-':>6s}"
        print(f"{name:22s} {r['inference s/image']:15.3f} {r['inference s/image'] / base['inference s/image']:6.2f} "
              f"{train_cols} {r['detections matched']:8.1%} {r['peak RSS MB']:11.0f}")


if __name__ == "__main__":
    main()
