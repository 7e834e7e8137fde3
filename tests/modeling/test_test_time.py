"""Multi-scale testing, flip testing and ensembles (detres.modeling.test_time) on tiny R18-width models."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from detres.config import ConfigError, load_config
from detres.data.detection.mapper import DetectionDatasetMapper
from detres.data.detection.transforms import DetectionAugmentation
from detres.modeling.meta_arch.build import build_model
from detres.modeling.test_time import (
    EnsembleDetector,
    FlipDetector,
    MultiScaleDetector,
    MultiScaleRegionFeatures,
    SingleScaleDetector,
    build_test_time_model,
    hflip_boxes,
    hflip_input,
    select_scale_pairs,
)
from detres.modeling.test_time.multi_scale import PyramidLevel, pyramid_images

BASE_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "detection" / "Base-RCNN-C4.yaml"
# ResNet-18 topology at quarter width; a random trunk with identity frozen BN needs unit-scale inputs.
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.PIXEL_STD", [57.375, 57.12, 58.395],
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.ROI_HEADS.NUM_CLASSES", 3,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
    "INPUT.MIN_SIZE_TEST", 128,
]


def _cfg(*opts):
    return load_config(str(BASE_CONFIG), [*TINY, *opts])


def _model(seed: int = 0, cfg=None):
    torch.manual_seed(seed)
    return build_model(cfg if cfg is not None else _cfg()).eval()


def _image(h: int = 128, w: int = 160) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 40, (3, h, w), generator=g, dtype=torch.uint8)
    image[:, h // 4: 3 * h // 4, w // 4: 2 * w // 3] = torch.tensor([30, 180, 240], dtype=torch.uint8)[:, None, None]
    return image


def _input(h: int = 128, w: int = 160, **extra) -> dict:
    return {"image": _image(h, w), "height": h, "width": w, **extra}


def _assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert len(a["boxes"]) > 0
    assert torch.equal(a["classes"], b["classes"])
    for key in ("boxes", "scores"):
        assert torch.equal(a[key], b[key]) if atol == 0 else torch.allclose(a[key], b[key], atol=atol, rtol=0), key


# ---------------------------------------------------------------------------- scale selection
def test_select_scale_pairs_hand_computed():
    factors, target = (0.5, 1.0, 1.5, 2.0), 224.0 ** 2
    sides = torch.tensor([224.0, 448.0, 50.0, 180.0, 1000.0])
    # scaled areas of 180x180: 8100, 32400, 72900, 129600 -> |. - 50176| smallest at factor 1 (17776 < 22724)
    pairs = select_scale_pairs(sides ** 2, factors, target)
    assert pairs.tolist() == [[1, 2], [0, 1], [2, 3], [1, 2], [0, 1]]  # 50x50: top -> (2, 3); 1000: bottom
    # The paper's pyramid on a 375-pixel shorter side: a 100x100 region is ~213 px at 800 (|45511 - 50176|)
    # and ~267 at 1000 (|71111 - 50176|): scale 800 and the next larger one.
    paper = [s / 375 for s in (200, 400, 600, 800, 1000)]
    assert select_scale_pairs(torch.tensor([100.0 * 100.0]), paper, target).tolist() == [[3, 4]]
    assert select_scale_pairs(torch.tensor([10.0, 1e6]), (1.0,), target).tolist() == [[0, 0], [0, 0]]
    assert select_scale_pairs(torch.tensor([224.0 ** 2]), (1.0, 1.0), target).tolist() == [[0, 1]]  # capped levels
    with pytest.raises(ValueError, match="non-decreasing"):
        select_scale_pairs(torch.tensor([1.0]), (2.0, 1.0), target)


class _StubHeads(nn.Module):
    """box_features -> [the level map's value, box width in that level's pixels] per box."""

    def box_features(self, feature, boxes):
        rows = [torch.stack([f.flatten()[0].expand(len(b)), b[:, 2] - b[:, 0]], 1) for f, b in zip(feature, boxes)]
        return torch.cat(rows)

    def predictor_inputs(self, region_features, feature, image_sizes, counts):
        self.context_args = (feature, list(image_sizes), list(counts))
        return region_features


def test_multi_scale_region_features_maxout_of_the_pair():
    heads = _StubHeads()
    values, ratios = (5.0, 1.0, 3.0), (0.5, 1.0, 2.0)
    levels = [PyramidLevel(torch.full((2, 1, 4, 4), v), torch.full((2, 2), r))
              for v, r in zip(values, ratios)]
    base = torch.zeros(2, 1, 4, 4)
    fn = MultiScaleRegionFeatures(heads, levels, base, [(100, 100)] * 2, target_size=50)
    # areas vs 2500: A 50x50 -> levels (1, 2); B 200x200 -> (0, 1); C 10x10 -> top -> (1, 2)
    boxes = [torch.tensor([[0.0, 0.0, 50.0, 50.0], [0.0, 0.0, 200.0, 200.0]]), torch.tensor([[5.0, 5.0, 15.0, 15.0]])]
    assert [p.tolist() for p in fn.scale_pairs(boxes)] == [[[1, 2], [0, 1]], [[1, 2]]]
    out = fn(boxes)
    # element-wise max of [value, width] at the two levels: A max([1, 50], [3, 100]); B max([5, 100], [1, 200])
    assert out.tolist() == [[3.0, 100.0], [5.0, 200.0], [3.0, 20.0]]
    assert heads.context_args[0] is base and heads.context_args[2] == [2, 1]


# ---------------------------------------------------------------------------- pyramid images
def test_pyramid_images_match_the_test_loader(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (100, 150, 3), dtype=np.uint8)
    path = str(tmp_path / "im.png")
    cv2.imwrite(path, original)
    record = {"file_name": path, "height": 100, "width": 150, "image_id": 1}

    def load(short):
        return DetectionDatasetMapper(DetectionAugmentation((short,), 1000))(record)

    x = load(80)
    levels = pyramid_images(x, (60, 80, 120), 2000, "BGR")
    assert levels[1] is x["image"]  # the input's own size
    assert torch.equal(levels[0], load(60)["image"]) and torch.equal(levels[2], load(120)["image"])
    mirrored = pyramid_images(hflip_input(x), (120,), 2000, "BGR")[0]
    assert torch.equal(mirrored, load(120)["image"].flip(-1))
    no_file = pyramid_images({k: v for k, v in x.items() if k != "file_name"}, (60, 400), 500, "BGR")
    assert no_file[0].shape == (3, 60, 90) and no_file[1].shape == (3, 333, 500)  # longer side capped


# ---------------------------------------------------------------------------- multi-scale detector
def test_multi_scale_with_one_scale_equals_the_plain_model():
    model = _model()
    x = _input(height=256, width=320)  # the input is a half-size resize of a 256x320 original
    plain = model.inference([x, _input()])
    single = MultiScaleDetector(model, sizes=(128,), max_size=2000)([x, _input()])
    for a, b in zip(single, plain):
        _assert_same(a, b)
    _assert_same(SingleScaleDetector(model)([x])[0], model.inference([x])[0])


def test_multi_scale_pyramid_and_rpn_over_scales():
    model = _model()
    x = _input(height=256, width=320)
    detector = MultiScaleDetector(model, sizes=(200, 128, 64), max_size=2000, target_size=224)
    assert detector.sizes == (64, 128, 200)
    regions = detector.regions([x])
    proposals = regions.proposals[0]["boxes"]
    assert torch.equal(proposals, model.inference([x], return_proposals=True)[1][0]["boxes"])  # base-scale RPN
    merged = regions.region_features([proposals])
    assert merged.shape == (len(proposals), 128)
    out = detector([x])[0]
    plain = model.inference([x])[0]
    assert 0 < len(out["boxes"]) and not torch.equal(out["scores"], plain["scores"])
    assert (out["boxes"][:, 2] <= 320).all() and (out["boxes"][:, 3] <= 256).all()
    over_scales = MultiScaleDetector(model, sizes=(200, 128, 64), max_size=2000, rpn_over_scales=True)
    union = over_scales.regions([x]).proposals[0]["boxes"]
    assert len(union) == 32 and not torch.equal(union, proposals)  # top-K of the merged scales
    assert (union[:, 2] <= 160).all() and (union[:, 3] <= 128).all()  # mapped to base-scale pixels


def test_multi_scale_composes_with_global_context_and_box_refinement():
    cfg = _cfg("MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT", True, "MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED", True)
    model = _model(cfg=cfg)
    x = _input(height=256, width=320)
    # the plain model pools regions and whole images in one res5 pass, multi-scale in two: equal up to
    # the float rounding of differently batched convolutions
    _assert_same(MultiScaleDetector(model, sizes=(128,), max_size=2000)([x])[0], model.inference([x])[0], atol=1e-4)
    detector = MultiScaleDetector(model, sizes=(64, 128, 200), max_size=2000)
    regions = detector.regions([x])
    assert regions.region_features([regions.proposals[0]["boxes"][:5]]).shape == (5, 256)  # region + context
    assert len(detector([x])[0]["boxes"]) > 0


# ---------------------------------------------------------------------------- flip
def test_hflip_boxes_exact():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 50.0], [12.25, 1.0, 12.75, 2.0]])
    mirrored = hflip_boxes(boxes, 100)
    assert mirrored.tolist() == [[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 50.0], [87.25, 1.0, 87.75, 2.0]]
    assert torch.equal(hflip_boxes(mirrored, 100), boxes)


class _BlobDetector(nn.Module):
    """Detects the bright pixels' bounding box (a flip-equivariant detector); score 0.9, 0.8 if mirrored."""

    def forward(self, inputs):
        self.seen = inputs
        out = []
        for x in inputs:
            ys, xs = (x["image"][0] > 128).nonzero(as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({"boxes": box, "scores": torch.tensor([0.8 if x.get("hflip") else 0.9]),
                        "classes": torch.tensor([0])})
        return out


def test_flip_maps_detections_back_exactly():
    image = torch.zeros(3, 40, 64, dtype=torch.uint8)
    image[:, 5:15, 10:30] = 200  # box [10, 5, 30, 15]; mirrored: [34, 5, 54, 15]
    symmetric = torch.zeros(3, 40, 64, dtype=torch.uint8)
    symmetric[:, 8:20, 22:42] = 200  # centred: its own mirror image
    blob = _BlobDetector()
    out = FlipDetector(blob, nms_thresh=0.5, detections_per_image=100)(
        [{"image": image, "height": 40, "width": 64}, {"image": symmetric}])
    assert len(blob.seen) == 4 and blob.seen[2]["hflip"] and torch.equal(blob.seen[2]["image"], image.flip(-1))
    assert out[0]["boxes"].tolist() == [[10.0, 5.0, 30.0, 15.0]] and out[0]["scores"].tolist() == [pytest.approx(0.9)]
    assert out[1]["boxes"].tolist() == [[22.0, 8.0, 42.0, 20.0]]


def test_flip_merges_the_mirrored_detections_of_a_real_model():
    model = _model()
    x = _input(height=256, width=320)
    out = FlipDetector(model, nms_thresh=0.5, detections_per_image=100)([x])[0]
    plain, mirrored = model.inference([x, hflip_input(x)])  # one batch, as FlipDetector runs them
    candidates = torch.cat([plain["boxes"], hflip_boxes(mirrored["boxes"], 320)])
    assert len(out["boxes"]) == 100  # 2 x 100 candidates, per-class NMS, top 100
    matches = (out["boxes"][:, None] == candidates[None]).all(dim=2).any(dim=1)
    assert matches.all()
    assert out["scores"][0] == max(plain["scores"][0], mirrored["scores"][0])


def test_multi_scale_composes_with_flip(tmp_path):
    rng = np.random.default_rng(1)
    original = rng.integers(0, 60, (150, 200, 3), dtype=np.uint8)
    original[40:110, 30:120] = (240, 180, 30)
    paths = [str(tmp_path / "im.png"), str(tmp_path / "mirror.png")]
    cv2.imwrite(paths[0], original)
    cv2.imwrite(paths[1], original[:, ::-1].copy())
    mapper = DetectionDatasetMapper(DetectionAugmentation((128,), 1000))
    x, mirror = [mapper({"file_name": p, "height": 150, "width": 200, "image_id": 0}) for p in paths]
    detector = MultiScaleDetector(_model(), sizes=(96, 128, 192), max_size=2000)
    # the mirrored input's pyramid is read from the file and mirrored: the same as a mirrored file's
    _assert_same(detector([hflip_input(x)])[0], detector([mirror])[0])
    out = FlipDetector(detector, 0.5, 100)([x])[0]
    plain, mirrored = detector([x, hflip_input(x)])
    candidates = torch.cat([plain["boxes"], hflip_boxes(mirrored["boxes"], 200)])
    assert (out["boxes"][:, None] == candidates[None]).all(dim=2).any(dim=1).all()


# ---------------------------------------------------------------------------- ensemble
def test_ensemble_of_one_and_of_copies_equals_the_model():
    model = _model()
    inputs = [_input(height=256, width=320), _input()]
    plain = model.inference(inputs)
    for members in ([SingleScaleDetector(model)], [SingleScaleDetector(model), SingleScaleDetector(_model())]):
        outputs = EnsembleDetector(members, nms_thresh=0.7, topk=32)(inputs)
        for a, b in zip(outputs, plain):
            _assert_same(a, b)


def test_ensemble_averages_the_members_probabilities():
    model = _model()
    uniform = _model()  # the same weights but a classifier giving 1/4 to each of the 3 classes + background
    nn.init.zeros_(uniform.roi_heads.box_predictor.cls_score.weight)
    x = _input()
    plain, flat = model.inference([x])[0], uniform.inference([x])[0]
    assert torch.allclose(flat["scores"], torch.tensor(0.25))
    out = EnsembleDetector([SingleScaleDetector(model), SingleScaleDetector(uniform)], 0.7, 32)([x])[0]
    # same proposals and boxes; each probability becomes (p + 1/4) / 2, an increasing map: the same NMS
    assert torch.equal(out["boxes"], plain["boxes"]) and torch.equal(out["classes"], plain["classes"])
    assert torch.allclose(out["scores"], (plain["scores"] + 0.25) / 2, rtol=0, atol=1e-7)


def test_ensemble_of_two_models_differs_from_both():
    first, second = _model(0), _model(1)
    x = _input()
    out = EnsembleDetector([SingleScaleDetector(first), SingleScaleDetector(second)], 0.7, 32)([x])[0]
    a, b = first.inference([x])[0], second.inference([x])[0]
    assert len(out["boxes"]) > 0
    for member in (a, b):
        assert not torch.equal(out["scores"], member["scores"]) and not torch.equal(out["boxes"], member["boxes"])


# ---------------------------------------------------------------------------- build
def test_build_test_time_model_composes_from_the_config(tmp_path):
    model = _model()
    assert build_test_time_model(_cfg(), model) is model
    detector = build_test_time_model(_cfg("TEST.FLIP", True, "TEST.MULTI_SCALE.ENABLED", True), model)
    assert isinstance(detector, FlipDetector) and isinstance(detector.detector, MultiScaleDetector)
    assert detector.detector.sizes == (200, 400, 600, 800, 1000) and detector.detector.max_size == 2000

    member_cfg = tmp_path / "member.yaml"
    member_cfg.write_text(_cfg().dump())
    weights = tmp_path / "member.pth"
    torch.save(model.state_dict(), weights)
    ensemble = build_test_time_model(_cfg("TEST.ENSEMBLE", [[str(member_cfg), str(weights)]]), model)
    assert isinstance(ensemble, EnsembleDetector) and len(ensemble.members) == 2
    x = _input()
    _assert_same(ensemble([x])[0], model.inference([x])[0])  # the model and a copy of it
    with pytest.raises(ConfigError, match="pairs"):
        build_test_time_model(_cfg("TEST.ENSEMBLE", [["only_a_config.yaml"]]), model)
    with pytest.raises(ConfigError, match="FasterRCNN"):
        build_test_time_model(_cfg("TEST.FLIP", True), nn.Linear(2, 2))


def test_trainer_test_evaluates_the_test_time_model(tmp_path, monkeypatch):
    from detres.engine import trainer as trainer_module

    cfg = _cfg("MODEL.ROI_HEADS.NUM_CLASSES", 6, "DATASETS.TEST", ("synthetic_det_val",), "OUTPUT_DIR", str(tmp_path),
               "DATASETS.ROOT", str(tmp_path / "data"), "DATASETS.SYNTHETIC_DET.NUM_TRAIN", 1,
               "DATASETS.SYNTHETIC_DET.NUM_VAL", 2, "INPUT.MIN_SIZE_TEST", 88, "INPUT.MAX_SIZE_TEST", 128,
               "DATALOADER.NUM_WORKERS", 0, "TEST.IMS_PER_BATCH", 2,
               "TEST.FLIP", True, "TEST.MULTI_SCALE.ENABLED", True, "TEST.MULTI_SCALE.SIZES", (64, 88, 128))
    evaluated = []
    real = trainer_module.inference_on_dataset
    monkeypatch.setattr(trainer_module, "inference_on_dataset", lambda m, *a: evaluated.append(m) or real(m, *a))
    model = _model(cfg=cfg)
    results = trainer_module.Trainer.test(cfg, model)
    assert isinstance(evaluated[0], FlipDetector) and evaluated[0].detector.model is model
    assert 0.0 <= results["synthetic_det_val"]["bbox"]["AP"] <= 100.0
    assert not model.training  # the model's mode is kept
