#!/usr/bin/env python
"""The paper's Table 9 ablation (Appendix B) on a detection config: each extra of the paper's COCO
system added in turn, evaluated with pycocotools on the config's first test dataset.

    python tools/ablation.py --config configs/quickstart.yaml [--output output/ablation] [KEY VALUE ...]

Two models are trained with tools/train_net.py (reused when their ``model_final.pth`` exists): the
config as it is ("baseline") and the same with ``MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT True`` ("context").
Then, on the same held-out images, rows (each adds to the one above it):

    baseline                    the baseline model, single scale
    + box refinement            MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED (NMS 0.3, box voting)
    + context                   the context model, with refinement
    + multi-scale testing       TEST.MULTI_SCALE: the paper's pyramid scaled to the test size
    + ensemble of two models    the context and the baseline models, TEST.ENSEMBLE (an ensemble averages
                                its members' predictions and selects once: no box refinement inside)

each with AP, AP50, AP75 (percent) and the seconds per image of inference (model only, batch of
``TEST.IMS_PER_BATCH``). The table is printed and written to ``<output>/ablation.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.build import build_test_loader, check_datasets  # noqa: E402
from detres.data.catalog import MetadataCatalog  # noqa: E402
from detres.evaluation.build import build_evaluator  # noqa: E402
from detres.evaluation.evaluator import inference_on_dataset  # noqa: E402
from detres.modeling.meta_arch.build import build_model  # noqa: E402
from detres.modeling.test_time import build_test_time_model  # noqa: E402
from detres.modeling.weight_import import load_weights  # noqa: E402
from detres.utils.logger import setup_logger  # noqa: E402

TRAIN_NET = Path(__file__).resolve().parent / "train_net.py"
# The paper's pyramid (shorter sides 200..1000 around its 600 px test size) and SPPnet's 224x224 target,
# scaled to the config's test size.
PAPER_SIZES, PAPER_TEST_SIZE, PAPER_TARGET = (200, 400, 600, 800, 1000), 600, 224


class TimedModel(nn.Module):
    """Runs ``model`` and adds the seconds it took to ``seconds``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, inputs: List[dict]) -> List[dict]:
        start = time.perf_counter()
        outputs = self.model(inputs)
        self.seconds += time.perf_counter() - start
        return outputs


def train(config: str, opts: Sequence[str], out: Path) -> Path:
    """``out/model_final.pth``, trained by tools/train_net.py unless it exists."""
    weights = out / "model_final.pth"
    if weights.is_file():
        print(f"reusing {weights}", flush=True)
        return weights
    print(f"training {out.name}: {TRAIN_NET.name} --config {config} {' '.join(opts)}", flush=True)
    subprocess.run([sys.executable, str(TRAIN_NET), "--config", config, *opts, "OUTPUT_DIR", str(out)], check=True)
    return weights


def multi_scale_opts(test_size: int) -> List[str]:
    sizes = tuple(round(s * test_size / PAPER_TEST_SIZE) for s in PAPER_SIZES)
    target = round(PAPER_TARGET * test_size / PAPER_TEST_SIZE)
    return ["TEST.MULTI_SCALE.ENABLED", "True", "TEST.MULTI_SCALE.SIZES", str(sizes),
            "TEST.MULTI_SCALE.TARGET_SIZE", str(target)]


def evaluate(config: str, opts: Sequence[str], weights: Path, out: Path) -> Tuple[Dict[str, float], float]:
    """COCO metrics (percent) on ``DATASETS.TEST[0]`` and seconds per image of the model."""
    cfg = load_config(config, list(opts) + ["TEST.VIS_IMAGES", "0"])
    model = build_model(cfg)
    load_weights(model, str(weights))
    model.eval()
    timed = TimedModel(build_test_time_model(cfg, model))
    name = cfg.DATASETS.TEST[0]
    loader = build_test_loader(cfg, name)
    results = inference_on_dataset(timed, loader, build_evaluator(cfg, name, str(out)))
    return results["bbox"], timed.seconds / len(loader.dataset)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="detection config (e.g. configs/quickstart.yaml)")
    parser.add_argument("--output", default="output/ablation", help="folder of the two training runs and the table")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for both models: KEY VALUE ...")
    args = parser.parse_args(argv)
    out = Path(args.output)
    try:
        cfg = load_config(args.config, args.opts)
        check_datasets(cfg, train=True)
        if getattr(MetadataCatalog.get(cfg.DATASETS.TEST[0]), "evaluator_type", None) != "coco":
            raise ConfigError(f"the ablation reports COCO AP, AP50 and AP75: {cfg.DATASETS.TEST[0]} is not a "
                              "COCO-format dataset")
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"ablation.py: error: {e}")
    setup_logger()
    baseline = train(args.config, args.opts, out / "baseline")
    context_opts = [*args.opts, "MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT", "True"]
    context = train(args.config, context_opts, out / "context")

    refine = ["MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED", "True"]
    scales = multi_scale_opts(cfg.INPUT.MIN_SIZE_TEST)
    # the baseline joins the evaluated (context) model, with the config it was trained with
    ensemble = ["TEST.ENSEMBLE", repr([[str(baseline.parent / "config.yaml"), str(baseline)]])]
    rows = [
        ("baseline", args.opts, baseline),
        ("+ box refinement", [*args.opts, *refine], baseline),
        ("+ context", [*context_opts, *refine], context),
        ("+ multi-scale testing", [*context_opts, *refine, *scales], context),
        ("+ ensemble of two models", [*context_opts, *refine, *scales, *ensemble], context),
    ]
    table = []
    for label, opts, weights in rows:
        metrics, seconds = evaluate(args.config, opts, weights, out / "eval" / label.strip("+ ").replace(" ", "_"))
        table.append({"row": label, "AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"],
                      "s/image": seconds})
    (out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"\nAblation on {cfg.DATASETS.TEST[0]} ({torch.get_num_threads()} threads; {out / 'ablation.json'}):")
    print(f"{'':28s} {'AP':>6s} {'AP50':>6s} {'AP75':>6s} {'s/image':>8s}")
    for r in table:
        print(f"{r['row']:28s} {r['AP']:6.2f} {r['AP50']:6.2f} {r['AP75']:6.2f} {r['s/image']:8.4f}")


if __name__ == "__main__":
    main()
