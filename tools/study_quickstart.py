#!/usr/bin/env python
"""The residual-network study in one command: plain-20, ResNet-20 and ResResNet-20 trained on the
generated CIFAR-like set (``configs/quickstart_cls.yaml``, shortened schedule), side by side.

    python tools/study_quickstart.py [--output output/study_quickstart] [--iters 156] [KEY VALUE ...]

Each model is trained by ``tools/train_net.py`` in its own process (``OUTPUT_DIR/<model>``): by
default 2 epochs of the 5000 images (156 iterations of 64, lr / 10 at 60% and 85%), so that the three
runs fit in 15 minutes on a busy 2-core CPU, with the test error evaluated every half epoch. Then
the final training and test errors are printed side by side and ``summary.json``, ``curves.png``
(training error thin/dashed, test error bold, x in epochs: the paper's Fig. 6 style), ``accuracy.png``
and ``loss.png`` (the reproduction reports' per-epoch pictures) and ``responses.png`` /
``responses.json`` (std of each 3x3 layer's response on the validation set: the paper's Fig. 7) are written.
``KEY VALUE`` overrides go to every run (e.g. ``DATASETS.ROOT /data``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TOOLS))

import analyze_responses  # noqa: E402
import plot_curves  # noqa: E402

CONFIG = REPO / "configs" / "quickstart_cls.yaml"
# label -> config overrides selecting the model (all depth 20, shortcut option A)
MODELS: Dict[str, List[str]] = {
    "plain-20": ["MODEL.CIFAR_RESNETS.PLAIN", "True"],
    "ResNet-20": [],
    "ResResNet-20": ["MODEL.CIFAR_RESNETS.STAGE_SHORTCUTS", "True"],
}
ITERS_PER_EPOCH = 78  # 5000 generated training images, batch 64
VAL_SET = "synthetic_cls_val"


def schedule(iters: int) -> List[str]:
    """Config overrides of the shortened schedule: lr / 10 at 60% and 85% of ``iters``, evaluation every half epoch."""
    steps = f"({round(0.6 * iters)}, {round(0.85 * iters)})"
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", steps, "SOLVER.CHECKPOINT_PERIOD", str(iters),
            "TEST.EVAL_PERIOD", str(ITERS_PER_EPOCH // 2)]


def final_errors(run_dir: Path) -> Dict[str, float]:
    """The last logged training error (%, mean over the last logging window) and test error (%) of a run."""
    series = plot_curves.load_series(str(run_dir))
    return {"train_error": series["train"][1][-1], "test_error": series["test"][1][-1]}


def train(label: str, output: Path, iters: int, opts: Sequence[str]) -> float:
    """Train one model with ``tools/train_net.py``; returns its wall time in seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, str(TOOLS / "train_net.py"), "--config", str(CONFIG), *MODELS[label], *schedule(iters),
           "OUTPUT_DIR", str(output / label), *opts]
    print(f"[{label}] training {iters} iterations -> {output / label}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"study_quickstart.py: training {label} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def run(output: Path, iters: int, opts: Sequence[str], images: int = 1000) -> Dict[str, dict]:
    """Train the three models, write the pictures and ``summary.json``; returns the summary."""
    summary = {}
    for label in MODELS:
        seconds = train(label, output, iters, opts)
        summary[label] = {**final_errors(output / label), "train_seconds": round(seconds, 1)}
    labels = list(MODELS)
    runs = [str(output / label) for label in labels]
    plot_curves.plot_runs(runs, labels, str(output / "curves.png"),
                          title="generated CIFAR-like set: thin dashed training error, bold test error",
                          iters_per_epoch=ITERS_PER_EPOCH)
    for metric in ("accuracy", "loss"):  # the reproduction reports' per-epoch pictures
        plot_curves.plot_runs(runs, labels, str(output / f"{metric}.png"), iters_per_epoch=ITERS_PER_EPOCH,
                              metric=metric)
    models = [(label, str(output / label / "config.yaml"), str(output / label / "model_final.pth")) for label in labels]
    responses = analyze_responses.analyze(models, VAL_SET, images, str(output), opts)
    for label, layers in responses.items():
        summary[label]["response_std_mean"] = sum(s for _, s in layers) / len(layers)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: Dict[str, dict]) -> str:
    """The side-by-side table printed at the end."""
    lines = [f"{'model':<14}{'train err %':>12}{'test err %':>12}{'resp. std':>11}{'time s':>9}"]
    for label, r in summary.items():
        lines.append(f"{label:<14}{r['train_error']:>12.2f}{r['test_error']:>12.2f}"
                     f"{r['response_std_mean']:>11.3f}{r['train_seconds']:>9.0f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="output/study_quickstart", help="folder for the runs and pictures")
    parser.add_argument("--iters", type=int, default=2 * ITERS_PER_EPOCH, help="training iterations per model")
    parser.add_argument("--images", type=int, default=1000, help="validation images for the layer responses")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    summary = run(Path(args.output), args.iters, args.opts, args.images)
    print(format_summary(summary))
    print(f"wrote {args.output}/curves.png, accuracy.png, loss.png, responses.png, responses.json, summary.json "
          f"({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
