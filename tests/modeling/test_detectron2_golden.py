"""Detectron2 model-zoo parity: the golden narrow R50-C4 checkpoint must reproduce the reference
res4 features, proposals and detections (criteria of ../shared/golden/README.md)."""
import pickle

import pytest
import torch

from detres.modeling.weight_import import load_weights
from tools.benchmark import NO_SPEED_OPTIONS
from tools.d2_golden_parity import DEFAULT_CONFIG, build_golden_model, compare, format_figures


@pytest.fixture(scope="module")
def golden_dir(shared_dir):
    path = shared_dir / "golden" / "detectron2_r50_c4_w16"
    if not (path / "model_final.pkl").is_file():
        pytest.skip(f"{path} lacks model_final.pkl")
    return path


@pytest.fixture(scope="module")
def golden_model(golden_dir):
    return build_golden_model(golden_dir, DEFAULT_CONFIG)


# The speed options all on (the shipped default), all off, and each alone (with what it needs).
SPEED_OPTIONS = {
    "default": [],
    "plain": NO_SPEED_OPTIONS,
    "fold": NO_SPEED_OPTIONS + ["MODEL.FOLD_NORM", "True"],
    "channels_last": NO_SPEED_OPTIONS + ["MODEL.CHANNELS_LAST", "True"],
    "embedding_bag_roi_align": NO_SPEED_OPTIONS + ["MODEL.CPU_ROI_ALIGN", "embedding_bag"],
    # projecting needs pooling that computes only the bins res5 reads: on CPU, the embedding-bag RoIAlign
    "project_before_pooling": NO_SPEED_OPTIONS + ["MODEL.CPU_ROI_ALIGN", "embedding_bag",
                                                  "MODEL.PROJECT_BEFORE_POOLING", "True"],
}


@pytest.mark.parametrize("options", list(SPEED_OPTIONS))
def test_outputs_match_detectron2(golden_model, golden_dir, options):
    model = golden_model if not SPEED_OPTIONS[options] else build_golden_model(
        golden_dir, DEFAULT_CONFIG, SPEED_OPTIONS[options])
    figures = compare(model, golden_dir)
    report = format_figures(figures)
    print(report)
    assert figures["res4_rel_err"] < 1e-4, report
    assert len(figures["images"]) == 4
    for im in figures["images"]:
        assert im["num_proposals"][0] == im["num_proposals"][1], report
        assert im["num_detections"][0] == im["num_detections"][1], report
        assert im["proposals_matched"] >= 0.95, report
        assert im["detections_matched"] >= 0.95, report


def test_pth_checkpoint_loads_the_same(golden_model, golden_dir, tmp_path):
    # A Detectron2 training checkpoint (.pth): {"model": {name: tensor}, ...} with the same names.
    with open(golden_dir / "model_final.pkl", "rb") as f:
        blobs = pickle.load(f)["model"]  # the fixture is trusted; user files go through safe_pickle
    pth = tmp_path / "model_final.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in blobs.items()}, "iteration": 90000}, pth)
    model = build_golden_model(golden_dir, DEFAULT_CONFIG)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    report = load_weights(model, str(pth), strict=True)
    assert report.ok and report.loaded == 275
    expected = golden_model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
