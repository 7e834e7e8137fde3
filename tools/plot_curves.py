#!/usr/bin/env python
"""Training and test error curves of several runs in one figure, like the paper's CIFAR-10 figure
(plain-20/56 vs ResNet-20/56, Fig. 6): thin dashed lines training error, bold lines test error,
x = iterations, or epochs with ``--iters-per-epoch`` (391 for CIFAR-10 at batch 128).

    python tools/plot_curves.py --runs output/cifar_plain20 output/cifar_resnet20 \\
        --labels plain-20 ResNet-20 --iters-per-epoch 391 --output fig.png

Each run directory holds the ``metrics.json`` the trainer writes (one JSON object per line). The
training error is the ``--train-key`` scalar (default ``cls_error``, a fraction, averaged over each
logging period) and the test error the ``--test-key`` scalar (default: the first key ending in
``/top1_error``, in percent); ``--train-scale`` / ``--test-scale`` convert both to percent.
``--metric accuracy`` draws 100 - error instead, and ``--metric loss`` the training loss (``total_loss``),
the reproduction reports' per-epoch pictures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

Series = Tuple[List[int], List[float]]


def load_series(run_dir: str, train_key: str = "cls_error", test_key: Optional[str] = None,
                train_scale: float = 100.0, test_scale: float = 1.0) -> Dict[str, Series]:
    """``{"train": (iterations, errors), "test": (iterations, errors)}`` from ``run_dir/metrics.json``,
    sorted by iteration; a resumed run's repeated iterations keep their latest value."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a detres output directory?")
    train: Dict[int, float] = {}
    test: Dict[int, float] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON object ({e})") from e
        it = int(record["iteration"])
        if test_key is None:
            test_key = next((k for k in record if k.endswith("/top1_error")), None)
        if train_key in record:
            train[it] = float(record[train_key]) * train_scale
        if test_key is not None and test_key in record:
            test[it] = float(record[test_key]) * test_scale
    if not train and not test:
        raise ValueError(f"{path} has neither {train_key!r} nor a test error ({test_key or '*/top1_error'})")
    return {name: (sorted(d), [d[i] for i in sorted(d)]) for name, d in (("train", train), ("test", test))}


METRICS = ("error", "accuracy", "loss")


def plot_runs(runs: Sequence[str], labels: Sequence[str], output: str, title: str = "",
              iters_per_epoch: Optional[int] = None, metric: str = "error",
              **series_options) -> Dict[str, Dict[str, Series]]:
    """Draw every run's curves into ``output`` (PNG); returns the plotted series by label (x in
    iterations). With ``iters_per_epoch`` the x axis shows epochs: (iteration + 1) / iters_per_epoch.
    ``metric``: "error" (%), "accuracy" (100 - error) or "loss" (the training ``total_loss`` only)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "loss":
        series_options = {**series_options, "train_key": "total_loss", "train_scale": 1.0}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(labels) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(labels)} labels")
    data = {label: load_series(run, **series_options) for run, label in zip(runs, labels)}
    if metric == "accuracy":
        data = {label: {kind: (its, [100.0 - v for v in values]) for kind, (its, values) in series.items()}
                for label, series in data.items()}
    elif metric == "loss":  # no test loss is logged
        data = {label: {"train": series["train"], "test": ([], [])} for label, series in data.items()}
    def x_values(iterations: List[int]) -> List[float]:
        return [(it + 1) / iters_per_epoch for it in iterations] if iters_per_epoch else iterations

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for (label, series), color in zip(data.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
        for kind, style, width in (("train", "--", 1.0), ("test", "-", 2.0)):
            its, errors = series[kind]
            if its:
                ax.plot(x_values(its), errors, linestyle=style, linewidth=width, color=color, label=f"{label} ({kind})")
    ax.set_xlabel("epochs" if iters_per_epoch else "iterations")
    ax.set_ylabel({"error": "error (%)", "accuracy": "accuracy (%)", "loss": "training loss"}[metric])
    ax.set_title(title or (f"thin dashed: training {metric}, bold: test {metric}" if metric != "loss"
                           else "training loss"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return data


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="output directories with metrics.json")
    parser.add_argument("--labels", nargs="+", help="one label per run (default: the directory names)")
    parser.add_argument("--output", default="curves.png", help="PNG file to write")
    parser.add_argument("--title", default="")
    parser.add_argument("--iters-per-epoch", type=int, default=None, help="x axis in epochs (391: CIFAR-10, batch 128)")
    parser.add_argument("--metric", choices=METRICS, default="error", help="error (default), accuracy or loss")
    parser.add_argument("--train-key", default="cls_error")
    parser.add_argument("--test-key", default=None, help="default: the first key ending in /top1_error")
    parser.add_argument("--train-scale", type=float, default=100.0, help="factor to percent (cls_error is a fraction)")
    parser.add_argument("--test-scale", type=float, default=1.0, help="factor to percent (top1_error is in percent)")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    try:
        plot_runs(args.runs, labels, args.output, args.title, args.iters_per_epoch, args.metric, train_key=args.train_key,
                  test_key=args.test_key, train_scale=args.train_scale, test_scale=args.test_scale)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
