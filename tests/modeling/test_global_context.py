import pytest
import torch
from torchvision.ops import roi_align

from detres.config import ConfigError, load_config
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.meta_arch.build import build_model
from detres.modeling.roi_heads import build_roi_heads
from detres.modeling.roi_heads.global_context import GlobalContext, image_boxes
from detres.modeling.weight_import import load_weights
from detres.utils.events import EventStorage
from tests.modeling.test_faster_rcnn import _synthetic_input
from tests.modeling.test_roi_heads import IMAGE_SIZES, _cfg, _inputs


def _context_heads(enabled: bool = True):
    cfg = _cfg(18, 32)  # res4 128 channels, res5 256
    cfg.merge_from_dict({"MODEL": {"ROI_BOX_HEAD": {"GLOBAL_CONTEXT": enabled}}})
    torch.manual_seed(0)
    return build_roi_heads(cfg, {"res4": ShapeSpec(128, 16)})


def _tiny_detector(global_context: bool, num_classes: int = 3):
    cfg = load_config("configs/detection/Base-RCNN-C4.yaml", [
        "MODEL.DEVICE", "cpu", "MODEL.PIXEL_STD", [57.375, 57.12, 58.395], "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,  # res5: 128 channels
        "MODEL.ROI_HEADS.NUM_CLASSES", num_classes, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 32, "INPUT.SIZE_DIVISIBILITY", 32,
        "MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT", global_context])
    torch.manual_seed(0)
    return build_model(cfg)


def test_context_doubles_the_predictor_input():
    assert _context_heads(False).global_context is None
    assert _context_heads(False).box_predictor.cls_score.in_features == 256
    heads = _context_heads()
    assert isinstance(heads.global_context, GlobalContext)
    assert heads.box_predictor.cls_score.in_features == heads.box_predictor.bbox_pred.in_features == 512
    assert image_boxes([(128, 192), (256, 160)], torch.device("cpu"))[1].tolist() == [[0.0, 0.0, 160.0, 256.0]]


def test_context_feature_is_the_pooled_full_image_box():
    heads = _context_heads().eval()
    features, proposals, _ = _inputs(128)
    boxes = [p["boxes"] for p in proposals]
    with torch.no_grad():
        inputs = heads.region_features_fn(features, IMAGE_SIZES)(boxes)
        assert inputs.shape == (24, 512)
        assert torch.allclose(inputs[:, :256], heads.box_features(features["res4"], boxes))
        for i, (h, w) in enumerate(IMAGE_SIZES):  # the image's own box, not the padded 256 x 256 map
            pooled = roi_align(features["res4"][i:i + 1], [torch.tensor([[0.0, 0.0, w, h]])], 14, 1 / 16, 0,
                               aligned=True)
            manual = heads.res5(pooled).mean(dim=(2, 3))  # (1, 256)
            rows = inputs[12 * i:12 * (i + 1), 256:]
            assert torch.allclose(rows, manual.expand(12, -1), atol=1e-6)
        assert not torch.allclose(inputs[0, 256:], inputs[12, 256:])  # each region gets its own image's


def test_regions_and_whole_images_share_one_res5_batch_in_training():
    # Pooled apart, the whole-image features would be a batch-norm batch of their own (N samples of a
    # very different distribution) and skew the running statistics of a trainable-BN res5.
    heads = _context_heads().train()
    features, proposals, _ = _inputs(128)
    batches = []
    heads.res5.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    heads.region_features_fn(features, IMAGE_SIZES)([p["boxes"] for p in proposals])
    assert batches == [24 + 2]  # 12 regions of each of the 2 images and their 2 whole-image boxes


def test_detector_with_context_trains():
    model = _tiny_detector(True).train()
    assert model.roi_heads.box_predictor.cls_score.weight.shape == (4, 256)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    inputs, totals = [_synthetic_input()], []
    with EventStorage() as storage:
        for step in range(12):
            losses = model(inputs)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            if step == 0:  # the context half of the predictor learns, and so does res5 through it
                assert model.roi_heads.box_predictor.cls_score.weight.grad[:, 128:].abs().sum() > 0
            optimizer.step()
            totals.append(total.item())
            storage.step()
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) < 0.7 * sum(totals[:3]), f"loss did not decrease: {totals}"
    result = model.eval()([_synthetic_input()])[0]
    assert set(result) == {"boxes", "scores", "classes"}


@pytest.mark.parametrize("saved,loading,has", [(True, False, "global context"), (False, True, "no global context")])
def test_context_mismatch_is_a_clear_error(tmp_path, saved, loading, has):
    path = tmp_path / "model_final.pth"
    torch.save({"model": _tiny_detector(saved).state_dict(), "iteration": 1}, path)
    target = _tiny_detector(loading)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for kwargs in ({}, {"strict": True}, {"require_class_layers": True}):
        with pytest.raises(ConfigError) as info:
            load_weights(target, path, **kwargs)
        widths = (256, 128) if saved else (128, 256)
        assert str(info.value) == (
            f"weights {path} have {has} (box predictor input width {widths[0]}, the module's is {widths[1]}) "
            f"but MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT is {loading}; set MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT {saved}")
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded
    assert load_weights(_tiny_detector(saved), path, strict=True).ok


def test_context_and_class_count_mismatch_names_the_context(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": _tiny_detector(True, num_classes=5).state_dict()}, path)
    with pytest.raises(ConfigError, match=r"have global context .* set MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT True$"):
        load_weights(_tiny_detector(False, num_classes=2), path)
