"""The localization quickstart (configs/localization/quickstart_{cls,loc}.yaml) end to end through
tools/train_net.py on a shortened schedule: the classifier is trained, the per-class RPN localizer is
initialised from its checkpoint and trained (its final evaluation, without attached classifiers,
reports the ground-truth-class LOC error), then ``--eval-only`` runs classification -> localization ->
metrics with the classifier attached, and demo.py draws the five guesses. The figures must beat the
whole-image baseline the evaluator reports; the full run's figures are in the README."""
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs" / "localization"
# a third of the images; a sixth of the classifier's iterations and under half of the localizer's (600 each
# in the configs)
SHORT = ("DATASETS.SYNTHETIC_LOC.NUM_TRAIN", "640", "DATASETS.SYNTHETIC_LOC.NUM_VAL", "100",
         "SOLVER.WARMUP_ITERS", "20", "DATALOADER.NUM_WORKERS", "0")
CLS_ITERS = ("SOLVER.MAX_ITER", "100", "SOLVER.STEPS", "(80,)", "SOLVER.CHECKPOINT_PERIOD", "100")
LOC_ITERS = ("SOLVER.MAX_ITER", "250", "SOLVER.STEPS", "(200,)", "SOLVER.CHECKPOINT_PERIOD", "250")


@pytest.mark.slow
def test_localization_quickstart_beats_the_whole_image_baseline(tmp_path, run_tool):
    data, cls_out, loc_out = tmp_path / "data", tmp_path / "cls", tmp_path / "loc"
    common = ("DATASETS.ROOT", data, *SHORT)
    proc = run_tool("train_net", "--config", CONFIGS / "quickstart_cls.yaml", *common, *CLS_ITERS,
                    "OUTPUT_DIR", cls_out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    classifier = cls_out / "model_final.pth"
    # training, evaluated at the end without the classifier: only the ground-truth class is localized
    proc = run_tool("train_net", "--config", CONFIGS / "quickstart_loc.yaml", *common, *LOC_ITERS,
                    "OUTPUT_DIR", loc_out, "MODEL.WEIGHTS", classifier, "MODEL.LOCALIZER.CLASSIFIER_CONFIGS", "[]",
                    "MODEL.LOCALIZER.CLASSIFIER_WEIGHTS", "[]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unexpected (in the checkpoint, not in the module):\n  backbone.linear" in proc.stdout
    last = json.loads((loc_out / "metrics.json").read_text().splitlines()[-1])
    key = "synthetic_loc_val/localization/"
    assert {k[len(key):] for k in last if k.startswith(key)} == {"gt_loc_error", "baseline_gt_loc_error", "num_images"}

    # the pipeline: the classifier attached, the trained localizer's weights
    proc = run_tool("train_net", "--config", CONFIGS / "quickstart_loc.yaml", "--eval-only", *common,
                    "OUTPUT_DIR", tmp_path / "eval", "MODEL.WEIGHTS", loc_out / "model_final.pth",
                    "MODEL.LOCALIZER.CLASSIFIER_CONFIGS", f"['{CONFIGS / 'quickstart_cls.yaml'}']",
                    "MODEL.LOCALIZER.CLASSIFIER_WEIGHTS", f"['{classifier}']", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "eval_results.json").read_text())["synthetic_loc_val"]["localization"]
    print({k: round(v, 2) for k, v in metrics.items()})
    assert metrics["num_images"] == 100
    assert metrics["gt_loc_error"] == pytest.approx(last[key + "gt_loc_error"])  # the same localizer
    # chance is 87.5 % top-1 classification error (8 classes)
    assert metrics["top1_cls_error"] < 50.0 and metrics["top5_cls_error"] < metrics["top1_cls_error"] + 1e-9
    for name in ("gt_loc_error", "top1_loc_error", "top5_loc_error"):
        assert metrics[name] < metrics[f"baseline_{name}"] - 20.0, (name, metrics)
    rows = (tmp_path / "eval" / "inference" / "synthetic_loc_val" / "loc_submission.csv").read_text().splitlines()
    assert rows[0] == "ImageId,PredictionString" and len(rows) == 101 and len(rows[1].split(",")[1].split()) == 25

    images = sorted((data / "generated").glob("synthetic_loc_*/ILSVRC/Data/CLS-LOC/val/*.JPEG"))
    proc = run_tool("demo", "--config", CONFIGS / "quickstart_loc.yaml", "--input", images[0], "--output",
                    tmp_path / "pictures", "MODEL.WEIGHTS", loc_out / "model_final.pth", *common,
                    "MODEL.LOCALIZER.CLASSIFIER_CONFIGS", f"['{CONFIGS / 'quickstart_cls.yaml'}']",
                    "MODEL.LOCALIZER.CLASSIFIER_WEIGHTS", f"['{classifier}']", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top-5 (class score [x1, y1, x2, y2])") == 1 and proc.stdout.count("[") >= 6
    assert (tmp_path / "pictures" / (images[0].stem + ".jpg")).is_file()
