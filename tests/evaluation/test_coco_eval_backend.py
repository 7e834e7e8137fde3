"""TEST.COCO_EVAL_BACKEND: faster-coco-eval gives the same 12 numbers and per-category AP as pycocotools
(coco128 and a generated set), through evaluate_coco, COCOEvaluator and tools/evaluate.py; a missing
package or an unknown backend is a clear config error."""
import json
import math
import sys

import numpy as np
import pytest
import torch

from detres.config import ConfigError, get_cfg
from detres.data.catalog import DatasetCatalog
from detres.data.detection.coco import contiguous_id_map, load_coco_api, register_coco_instances
from detres.evaluation.coco_evaluation import COCO_METRICS, COCOEvaluator, coco_api_classes, evaluate_coco


@pytest.fixture
def faster():
    pytest.importorskip("faster_coco_eval")


def _assert_same(a, b):
    assert list(a) == list(b) and list(a)[:12] == list(COCO_METRICS)
    for key in a:
        assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key], rel=0, abs=1e-9), key


def _perturbed_ground_truth(dataset: dict, seed: int = 0) -> list:
    """Results from the non-crowd ground truth: boxes jittered by ~10% of their size, every third
    class changed to the next category, random scores, plus one random box per image."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in dataset["categories"])
    results = []
    for i, a in enumerate(a for a in dataset["annotations"] if not a["iscrowd"]):
        x, y, w, h = a["bbox"]
        jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
        cat = a["category_id"] if i % 3 else cat_ids[(cat_ids.index(a["category_id"]) + 1) % len(cat_ids)]
        results.append({"image_id": a["image_id"], "category_id": cat, "score": float(rng.random()),
                        "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]})
    for img in dataset["images"]:
        results.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)), "score": float(rng.random()),
                        "bbox": [float(v) for v in rng.uniform(0, 100, 4)]})
    return results


def _as_model_outputs(coco_gt, results):
    """``(inputs, outputs)`` as COCOEvaluator.process takes them: per image, XYXY boxes and contiguous classes."""
    id_map, _ = contiguous_id_map(coco_gt)
    inputs, outputs = [], []
    for image_id in sorted(coco_gt.getImgIds()):
        mine = [r for r in results if r["image_id"] == image_id]
        xywh = torch.tensor([r["bbox"] for r in mine], dtype=torch.float64).reshape(-1, 4)
        inputs.append({"image_id": image_id})
        outputs.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                        "scores": torch.tensor([r["score"] for r in mine], dtype=torch.float64),
                        "classes": torch.tensor([id_map[r["category_id"]] for r in mine], dtype=torch.int64)})
    return inputs, outputs


def test_coco128_same_numbers(faster, coco128_dir):
    coco_gt = load_coco_api(str(coco128_dir / "annotations" / "instances_val2017.json"))
    results = _perturbed_ground_truth(coco_gt.dataset)
    reference = evaluate_coco(coco_gt, results)
    # a third of the classes wrong, boxes jittered: an imperfect detector's numbers (pycocotools, pinned)
    assert reference["AP"] == pytest.approx(18.588419422, abs=1e-6)
    assert reference["AP50"] == pytest.approx(43.069288513, abs=1e-6)
    _assert_same(reference, evaluate_coco(coco_gt, results, backend="faster_coco_eval"))
    subset = sorted(coco_gt.getImgIds())[:40]
    _assert_same(evaluate_coco(coco_gt, results, img_ids=subset),
                 evaluate_coco(coco_gt, results, img_ids=subset, backend="faster_coco_eval"))


def test_generated_set_same_numbers(faster, load_tool):
    dataset, results = load_tool("benchmark_coco_eval").synthetic_coco(num_images=150, dets_per_image=60,
                                                                       num_classes=12, seed=3)
    assert len(results) == 150 * 60 and any(a["iscrowd"] for a in dataset["annotations"])
    coco_class, _ = coco_api_classes("pycocotools")
    coco_gt = coco_class()
    coco_gt.dataset = dataset
    coco_gt.createIndex()
    reference = evaluate_coco(coco_gt, results)
    assert all(0 < reference[k] < 100 for k in COCO_METRICS)  # every size range has ground truth and hits
    assert reference["AP"] == pytest.approx(11.015600990, abs=1e-6)
    assert reference["AR100"] == pytest.approx(54.192719226, abs=1e-6)
    _assert_same(reference, evaluate_coco(coco_gt, results, backend="faster_coco_eval"))
    fast_gt = coco_api_classes("faster_coco_eval")[0]()  # a ground truth built by the other API works too
    fast_gt.dataset = dataset
    fast_gt.createIndex()
    _assert_same(reference, evaluate_coco(fast_gt, results, backend="pycocotools"))


def test_evaluator_and_tool_use_the_backend(faster, coco128_dir, tmp_path, load_tool):
    json_file = coco128_dir / "annotations" / "instances_val2017.json"
    coco_gt = load_coco_api(str(json_file))
    results = _perturbed_ground_truth(coco_gt.dataset, seed=1)
    reference = evaluate_coco(coco_gt, results)

    name = "backend_coco128"
    DatasetCatalog.remove(name)
    register_coco_instances(name, str(json_file), str(coco128_dir / "val2017"))
    inputs, outputs = _as_model_outputs(coco_gt, results)
    metrics = {}
    try:
        for backend in ("pycocotools", "faster_coco_eval"):
            cfg = get_cfg()
            cfg.TEST.COCO_EVAL_BACKEND = backend
            evaluator = COCOEvaluator(cfg, name)
            evaluator.process(inputs, outputs)
            metrics[backend] = evaluator.evaluate()["bbox"]
    finally:
        DatasetCatalog.remove(name)
    assert metrics["pycocotools"]["AP"] == pytest.approx(reference["AP"], abs=0.01)  # results rounded to 3 decimals
    _assert_same(metrics["pycocotools"], metrics["faster_coco_eval"])

    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    out = tmp_path / "metrics.json"
    load_tool("evaluate").main(["--dataset-json", str(json_file), "--results", str(results_file),
                                "--backend", "faster_coco_eval", "--output", str(out)])
    _assert_same(reference, json.loads(out.read_text())["bbox"])


def test_missing_package_and_unknown_backend(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval.core.coco", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install faster-coco-eval"):
        coco_api_classes("faster_coco_eval")
    with pytest.raises(ConfigError, match=r"TEST.COCO_EVAL_BACKEND must be one of .*'pycocotool'"):
        coco_api_classes("pycocotool")
    cfg = get_cfg()
    cfg.TEST.COCO_EVAL_BACKEND = "faster_coco_eval"
    DatasetCatalog.remove("backend_missing")
    register_coco_instances("backend_missing", "instances.json", "images")  # never read
    try:
        with pytest.raises(ConfigError, match="faster-coco-eval"):  # at construction, before any inference
            COCOEvaluator(cfg, "backend_missing")
    finally:
        DatasetCatalog.remove("backend_missing")
