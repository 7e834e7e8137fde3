import pytest
import torch

from detres.config import load_config
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN, batch_images
from detres.utils.events import EventStorage

NUM_CLASSES = 3


def _r18_model(channels_last: bool = True, **roi_heads):
    # ResNet-18 topology at quarter width (res5: 128 channels) so that 20 CPU iterations take seconds;
    # a randomly initialised trunk with identity frozen BN needs unit-scale inputs (PIXEL_STD).
    cfg = load_config(
        "configs/detection/Base-RCNN-C4.yaml",
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.PIXEL_STD", [57.375, 57.12, 58.395],
            "MODEL.RESNETS.DEPTH", 18,
            "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
            "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
            "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 16,
            "MODEL.RPN.BATCH_SIZE_PER_IMAGE", 64,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64,
            "MODEL.RPN.POST_NMS_TOPK_TEST", 32,
            "INPUT.SIZE_DIVISIBILITY", 32,
            "MODEL.CHANNELS_LAST", channels_last,
            *[x for k, v in roi_heads.items() for x in (f"MODEL.ROI_HEADS.{k}", v)],
        ],
    )
    torch.manual_seed(0)
    return build_model(cfg)


def _synthetic_input():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 40, (3, 128, 160), generator=g, dtype=torch.uint8)
    image[:, 32:96, 40:110] = torch.tensor([30, 180, 240], dtype=torch.uint8)[:, None, None]
    return {
        "image": image,
        "gt_boxes": torch.tensor([[40.0, 32.0, 110.0, 96.0]]),
        "gt_classes": torch.tensor([1]),
        "height": 128,
        "width": 160,
        "file_name": "synthetic.jpg",
    }


def test_training_decreases_loss():
    model = _r18_model().train()
    assert isinstance(model, FasterRCNN)
    assert not any(p.requires_grad for p in model.backbone.res2.parameters())  # FREEZE_AT 2
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    inputs = [_synthetic_input()]
    totals, cls_losses = [], []
    with EventStorage() as storage:
        for _ in range(20):
            losses = model(inputs)
            assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
            total = sum(losses.values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            totals.append(total.item())
            cls_losses.append((losses["loss_rpn_cls"] + losses["loss_cls"]).item())
            storage.step()
    first, last = sum(totals[:3]) / 3, sum(totals[-3:]) / 3
    assert last < 0.6 * first, f"loss did not decrease: {totals}"
    # Box regression grows while the RPN starts proposing boxes near the object; classification falls.
    assert sum(cls_losses[-3:]) < 0.4 * sum(cls_losses[:3]), f"classification losses: {cls_losses}"
    assert "fast_rcnn/cls_accuracy" in storage.latest() and "rpn/num_pos_anchors" in storage.latest()


def test_inference_outputs_in_original_pixels():
    model = _r18_model(SCORE_THRESH_TEST=0.0).eval()
    x = _synthetic_input()
    x.update(height=256, width=320)  # the input is a half-size resize of the original
    results, proposals = model.inference([x, _synthetic_input()], return_proposals=True)
    assert len(results) == 2 and len(proposals) == 2
    assert 0 < len(proposals[0]["boxes"]) <= 32
    for r, (h, w) in zip(results, [(256, 320), (128, 160)]):
        assert set(r) == {"boxes", "scores", "classes"}
        assert 0 < len(r["boxes"]) <= 100 and r["classes"].dtype == torch.int64
        assert (r["boxes"] >= 0).all() and (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all()
    assert results[0]["boxes"][:, 2].max() > 160  # rescaled beyond the input's width
    assert model([x])[0]["boxes"].shape[1] == 4  # eval-mode forward is inference


def test_channels_last_changes_speed_not_results():
    fast, plain = _r18_model(SCORE_THRESH_TEST=0.0).eval(), _r18_model(channels_last=False, SCORE_THRESH_TEST=0.0).eval()
    conv = fast.backbone.stem.conv1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.backbone.stem.conv1.conv.weight.is_contiguous()
    plain.load_state_dict(fast.state_dict())
    inputs = [_synthetic_input()]
    with torch.inference_mode():
        features = fast.backbone(fast.preprocess_image(inputs)[0])["res4"]
        assert features.is_contiguous(memory_format=torch.channels_last)  # activations follow the weights
        a, b = fast(inputs)[0], plain(inputs)[0]
    assert len(a["boxes"]) == len(b["boxes"]) > 0
    assert torch.allclose(a["boxes"], b["boxes"], atol=1e-3) and torch.allclose(a["scores"], b["scores"], atol=1e-5)
    assert torch.equal(a["classes"], b["classes"])


def test_postprocess_rescales_clips_and_drops_empty():
    det = {
        "boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [150.0, 100.0, 170.0, 140.0], [5.0, 5.0, 5.0, 9.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "classes": torch.tensor([0, 1, 2]),
    }
    out = FasterRCNN._postprocess(det, {"height": 256, "width": 320}, (128, 160))
    assert out["boxes"].tolist() == [[20.0, 20.0, 100.0, 120.0], [300.0, 200.0, 320.0, 256.0]]
    assert out["classes"].tolist() == [0, 1]


def test_batch_images_pads_to_divisibility():
    a, b = torch.ones(3, 100, 130), 2 * torch.ones(3, 90, 161)
    batch, sizes = batch_images([a, b], 32)
    assert batch.shape == (2, 3, 128, 192) and sizes == [(100, 130), (90, 161)]
    assert batch[0, :, 100:].abs().sum() == 0 and batch[0, :, :, 130:].abs().sum() == 0
    assert torch.equal(batch[1, :, :90, :161], b)


def test_bad_training_inputs_name_the_file():
    model = _r18_model().train()
    x = _synthetic_input()
    del x["gt_boxes"]
    with pytest.raises(ValueError, match="synthetic.jpg.*gt_boxes"):
        model([x])
    x = _synthetic_input()
    x["gt_boxes"] = torch.tensor([[40.0, 32.0, 40.0, 96.0]])
    with pytest.raises(ValueError, match="synthetic.jpg: degenerate"):
        model([x])
    x = _synthetic_input()
    x["image"] = x["image"][:1]
    with pytest.raises(ValueError, match=r"synthetic.jpg: expected a \(3, H, W\) image"):
        model([x])
