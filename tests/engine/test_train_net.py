"""tools/train_net.py end to end on a tiny classification config (generated shapes, CIFAR-style ResNet-8):
train, exact resume with data-loader workers, eval-only, and config errors (one line, exit code 2)."""
import json
import logging
from pathlib import Path

import pytest
import torch

from detres.data.classification.synthetic import SYNTHETIC_CLASSES

REPO = Path(__file__).resolve().parents[2]

TINY = """\
MODEL:
  META_ARCHITECTURE: ImageClassifier
  DEVICE: cpu
  BACKBONE: {NAME: cifar_resnet}
  CIFAR_RESNETS: {DEPTH: 8, WIDTHS: [4, 8, 16], SHORTCUT: A, OUT_FEATURES: [linear]}
  CLASSIFIER: {NUM_CLASSES: 10}
  PIXEL_STD: [64.0, 64.0, 64.0]
INPUT:
  CLS: {AUGMENTATION: cifar, CROP_SIZE: 32, PAD: 4, PER_PIXEL_MEAN: True}
DATASETS:
  TRAIN: [synthetic_cls_train]
  TEST: [synthetic_cls_val]
  SYNTHETIC: {NUM_TRAIN: 96, NUM_VAL: 40}
DATALOADER: {NUM_WORKERS: 2}
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.05
  MAX_ITER: 8
  STEPS: [6]
  CHECKPOINT_PERIOD: 4
TEST: {EVAL_PERIOD: 4, IMS_PER_BATCH: 20}
SEED: 3
"""


@pytest.fixture(scope="module")
def train_net(load_tool):
    yield load_tool("train_net")
    logging.getLogger("detres").handlers.clear()


def metrics(out):
    return [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]


def test_train_resume_and_eval_only_through_the_tool(tmp_path, train_net, run_tool):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    # the uninterrupted run, as a user starts it
    full = tmp_path / "full"
    proc = run_tool("train_net", "--config", cfg, "OUTPUT_DIR", full, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iter: 7/8" in (full / "log.txt").read_text()
    for name in ("config.yaml", "run_info.json", "env.txt", "log.txt", "metrics.json", "model_final.pth"):
        assert (full / name).is_file(), name
    evals = [x["synthetic_cls_val/top1_error"] for x in metrics(full) if "synthetic_cls_val/top1_error" in x]
    assert len(evals) == 2 and all(0.0 <= e <= 100.0 for e in evals)

    # the same run stopped after 4 iterations, then resumed to 8 (2 loader workers each time)
    part = tmp_path / "part"
    train_net.cli(["--config", str(cfg), "OUTPUT_DIR", str(part), "SOLVER.MAX_ITER", "4"])
    saved = torch.load(part / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 4
    assert saved["class_names"] == list(SYNTHETIC_CLASSES)  # the training dataset's, for evaluation and demo
    train_net.cli(["--config", str(cfg), "--resume", "OUTPUT_DIR", str(part)])
    a = torch.load(full / "model_final.pth", weights_only=True)
    b = torch.load(part / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 8
    assert a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), f"{name} differs after resuming"
    assert torch.equal(a["model"]["pixel_mean_image"], b["model"]["pixel_mean_image"])
    assert a["model"]["pixel_mean_image"].std() > 1.0  # the training set's per-pixel mean, not a constant

    # evaluation only, from the trained weights: the same error as the final evaluation of training
    ev = tmp_path / "eval"
    train_net.cli(["--config", str(cfg), "--eval-only", "OUTPUT_DIR", str(ev), "MODEL.WEIGHTS",
                   str(full / "model_final.pth")])
    results = json.loads((ev / "eval_results.json").read_text())
    assert results["synthetic_cls_val"]["top1_error"] == pytest.approx(evals[-1])


def test_eval_only_refuses_class_mismatches_with_one_line(tmp_path, train_net, capsys):
    from detres.config import load_config
    from detres.modeling.meta_arch.build import build_model

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    weights = tmp_path / "six.pth"  # a 6-class model, as a detres checkpoint records it
    model = build_model(load_config(str(tiny), ["MODEL.CLASSIFIER.NUM_CLASSES", "6"]))
    torch.save({"model": model.state_dict(), "class_names": list("abcdef"), "iteration": 1}, weights)
    base = ["--config", str(tiny), "--eval-only", "OUTPUT_DIR", str(tmp_path / "e"), "MODEL.WEIGHTS", str(weights)]
    for opts, expected in [
        (["MODEL.CLASSIFIER.NUM_CLASSES", "6"],  # the model fits its weights, not the 10-class dataset
         ["the model has 6 classes (MODEL.CLASSIFIER.NUM_CLASSES)", "'synthetic_cls_val' has 10",
          "TEST.ALLOW_CLASS_MISMATCH"]),
        ([],  # the config fits the dataset, not the weights: the class layer would stay random
         [f"weights {weights} have 6 classes in backbone.linear but MODEL.CLASSIFIER.NUM_CLASSES is 10",
          "set MODEL.CLASSIFIER.NUM_CLASSES 6"]),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train_net.cli(base + opts)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("config error: ") and all(e in err for e in expected), err

    train_net.cli(base + ["MODEL.CLASSIFIER.NUM_CLASSES", "6", "TEST.ALLOW_CLASS_MISMATCH", "True"])
    results = json.loads((tmp_path / "e" / "eval_results.json").read_text())
    assert 0.0 <= results["synthetic_cls_val"]["top1_error"] <= 100.0
    log = (tmp_path / "e" / "log.txt").read_text()
    assert "WARNING] the model has 6 classes (MODEL.CLASSIFIER.NUM_CLASSES) but dataset 'synthetic_cls_val' has 10" in log
    assert "(evaluating anyway: TEST.ALLOW_CLASS_MISMATCH is set)" in log


def test_config_errors_print_one_line_and_exit_2(tmp_path, train_net, capsys, run_tool):
    bad = tmp_path / "bad.yaml"
    bad.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    proc = run_tool("train_net", "--config", bad)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "SOLVER.BASE_LRR" in lines[0] and "SOLVER.BASE_LR" in lines[0] and str(bad) in lines[0]

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    for argv, expected in [
        (["SOLVER.MAX_ITR", "10"], "unknown config key 'SOLVER.MAX_ITR'"),
        (["SOLVER.MAX_ITER", "ten"], "SOLVER.MAX_ITER"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
        (["--config", str(tiny), "SOLVER.LR_SCHEDULER", "poly", "OUTPUT_DIR", str(tmp_path / "o")],
         "SOLVER.LR_SCHEDULER"),  # a bad value found while building the trainer
        (["--config", str(tiny), "--eval-only", "OUTPUT_DIR", str(tmp_path / "e")], "MODEL.WEIGHTS"),
        (["--config", str(tiny), "DATASETS.TEST", "('my_val',)", "OUTPUT_DIR", str(tmp_path / "d")],
         "dataset 'my_val' is not registered"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            train_net.cli(argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, (argv, err)


def test_missing_coco_says_how_to_get_it_before_building_anything(tmp_path, train_net, capsys, monkeypatch):
    monkeypatch.delenv("DETRES_DATASETS", raising=False)
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))  # MODEL.WEIGHTS msra://R-50 is not cached here
    for config in ("frcnn_r50_coco.yaml", "frcnn_r101_coco.yaml"):
        with pytest.raises(SystemExit) as exit_info:
            train_net.cli(["--config", str(REPO / "configs" / config), "MODEL.DEVICE", "cpu",
                           "DATASETS.ROOT", str(tmp_path / "data"), "OUTPUT_DIR", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 1 and len(err.splitlines()) == 1, err
        expected_json = tmp_path / "data" / "coco" / "annotations" / "instances_train2017.json"
        assert f"annotation file not found: {expected_json}" in err
        assert "datasets/README.md" in err and "configs/quickstart.yaml" in err
        assert not (tmp_path / "cache").exists()  # nothing was downloaded or even attempted
