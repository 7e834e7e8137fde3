#!/usr/bin/env python
"""Compare detres with Detectron2 on a golden C4 Faster R-CNN fixture (checkpoint + reference outputs).

    python tools/d2_golden_parity.py [--golden ../shared/golden/detectron2_r50_c4_w16]
        [--config configs/detection/d2_R50_C4_golden.yaml] [--json] [KEY VALUE ...]

Loads the fixture's ``model_final.pkl`` into the detres model of ``--config``, feeds each reference
input (``input_i`` of ``outputs.npz``, one image per batch as the reference did) and reports:
the res4 relative error ``||a - b|| / ||b||`` (image 0), and per image the fraction of reference
proposals matched by a detres proposal with IoU > 0.99, and the fraction of reference detections
matched by a detres detection of the same class with IoU > 0.99 and a score within 1e-3
(the fixture README's criteria: res4 < 1e-4, both fractions >= 0.95).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.config import load_config  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.modeling.weight_import import load_weights  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GOLDEN = REPO_ROOT.parent / "shared" / "golden" / "detectron2_r50_c4_w16"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "detection" / "d2_R50_C4_golden.yaml"
IOU_THRESH, SCORE_TOL = 0.99, 1e-3


def matched_fraction(
    ref_boxes: torch.Tensor,
    boxes: torch.Tensor,
    ref_classes: Optional[torch.Tensor] = None,
    classes: Optional[torch.Tensor] = None,
    ref_scores: Optional[torch.Tensor] = None,
    scores: Optional[torch.Tensor] = None,
) -> float:
    """Fraction of reference boxes ``(M, 4)`` having a box among ``(N, 4)`` with IoU > 0.99 (and the
    same class and a score within 1e-3 when classes/scores are given). 1.0 when M == 0."""
    if len(ref_boxes) == 0:
        return 1.0
    if len(boxes) == 0:
        return 0.0
    ok = box_iou(ref_boxes, boxes) > IOU_THRESH
    if ref_classes is not None:
        ok &= ref_classes[:, None] == classes[None, :]
    if ref_scores is not None:
        ok &= (ref_scores[:, None] - scores[None, :]).abs() < SCORE_TOL
    return ok.any(dim=1).float().mean().item()


def build_golden_model(golden_dir: Path, config: Path, opts: List[str] = ()) -> torch.nn.Module:
    """The detres model of ``config`` with the fixture's Detectron2 weights loaded (strictly), in eval mode."""
    cfg = load_config(str(config), list(opts))
    model = build_model(cfg)
    load_weights(model, str(golden_dir / "model_final.pkl"), strict=True)
    return model.eval()


@torch.no_grad()
def compare(model: torch.nn.Module, golden_dir: Path) -> Dict[str, object]:
    """Run ``model`` on the fixture's inputs; returns the figures described in the module docstring."""
    ref = np.load(golden_dir / "outputs.npz")
    meta = json.loads((golden_dir / "meta.json").read_text())
    figures: Dict[str, object] = {"images": []}
    for i, info in enumerate(meta["images"]):
        x = {"image": torch.from_numpy(ref[f"input_{i}"]), "height": info["height"], "width": info["width"]}
        if i == 0:
            images, _ = model.preprocess_image([x])
            res4 = model.backbone(images)["res4"][0].cpu()
            res4_ref = torch.from_numpy(ref["res4_0"])
            if res4.shape != res4_ref.shape:
                raise ValueError(f"res4 shape {tuple(res4.shape)} differs from the reference {tuple(res4_ref.shape)}")
            figures["res4_rel_err"] = ((res4 - res4_ref).norm() / res4_ref.norm()).item()
        (det,), (props,) = model.inference([x], return_proposals=True)
        det = {k: v.cpu() for k, v in det.items()}
        ref_props = torch.from_numpy(ref[f"proposal_boxes_{i}"])
        ref_det = {k: torch.from_numpy(ref[f"{k}_{i}"]) for k in ("boxes", "scores", "classes")}
        figures["images"].append(
            {
                "file_name": info["file_name"],
                "num_proposals": [len(props["boxes"]), len(ref_props)],
                "proposals_matched": matched_fraction(ref_props, props["boxes"].cpu()),
                "num_detections": [len(det["boxes"]), len(ref_det["boxes"])],
                "detections_matched": matched_fraction(
                    ref_det["boxes"], det["boxes"], ref_det["classes"], det["classes"], ref_det["scores"], det["scores"]
                ),
            }
        )
    figures["min_proposals_matched"] = min(im["proposals_matched"] for im in figures["images"])
    figures["min_detections_matched"] = min(im["detections_matched"] for im in figures["images"])
    return figures


def format_figures(figures: Dict[str, object]) -> str:
    lines = [f"res4 relative error (image 0): {figures['res4_rel_err']:.2e}  (bar < 1e-4)"]
    for im in figures["images"]:
        lines.append(
            f"{im['file_name']}: proposals {im['num_proposals'][0]}/{im['num_proposals'][1]} matched "
            f"{im['proposals_matched']:.1%}, detections {im['num_detections'][0]}/{im['num_detections'][1]} "
            f"matched {im['detections_matched']:.1%}  (bars >= 95%)"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="fixture folder")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="detres config of the same model")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if not (args.golden / "model_final.pkl").is_file():
        parser.error(f"{args.golden} has no model_final.pkl (is ../shared present?)")
    figures = compare(build_golden_model(args.golden, args.config, args.opts), args.golden)
    print(json.dumps(figures, indent=1) if args.json else format_figures(figures))
    ok = figures["res4_rel_err"] < 1e-4 and figures["min_proposals_matched"] >= 0.95
    return 0 if ok and figures["min_detections_matched"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
