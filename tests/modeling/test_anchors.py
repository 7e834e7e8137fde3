import math

import pytest
import torch

from detres.config import get_cfg
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.poolers import RoIPooler
from detres.modeling.proposal_generator.anchor_generator import AnchorGenerator, build_anchor_generator

SIZES = [[32, 64, 128, 256, 512]]
RATIOS = [[0.5, 1.0, 2.0]]


def test_count_shapes_and_order():
    gen = AnchorGenerator(SIZES, RATIOS, strides=[16], offset=0.0)
    assert gen.num_anchors == [15]
    (anchors,) = gen([torch.zeros(1, 8, 3, 4)])
    assert anchors.shape == (3 * 4 * 15, 4)
    cell = anchors[:15]
    # size-major order: the first three anchors are size 32 with ratios 0.5, 1, 2
    w, h = math.sqrt(1024 / 0.5), 0.5 * math.sqrt(1024 / 0.5)
    torch.testing.assert_close(cell[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    torch.testing.assert_close(cell[1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))
    widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    expected_area = torch.tensor([s * s for s in SIZES[0] for _ in RATIOS[0]], dtype=torch.float32)
    torch.testing.assert_close(widths * heights, expected_area, rtol=1e-5, atol=1e-2)
    torch.testing.assert_close(heights / widths, torch.tensor(RATIOS[0] * 5))
    # anchors of cell (row 1, col 2) are centred at (2 * 16, 1 * 16)
    block = anchors[(1 * 4 + 2) * 15 : (1 * 4 + 3) * 15]
    torch.testing.assert_close((block[:, :2] + block[:, 2:]) / 2, torch.tensor([[32.0, 16.0]]).expand(15, 2))
    torch.testing.assert_close(block - cell, torch.tensor([32.0, 16.0, 32.0, 16.0]).expand(15, 4))
    assert len(gen.state_dict()) == 0  # anchors are not part of checkpoints


def test_offset_half_cell():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    gen = build_anchor_generator(cfg, {"res4": ShapeSpec(256, 16)}, ["res4"])
    (anchors,) = gen([torch.zeros(1, 8, 2, 2)])
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres[0].tolist() == [8.0, 8.0]
    assert centres[-1].tolist() == [24.0, 24.0]
    with pytest.raises(ValueError, match="offset"):
        AnchorGenerator(SIZES, RATIOS, [16], offset=1.0)
    with pytest.raises(ValueError, match="ASPECT_RATIOS"):
        AnchorGenerator([[32]], [[1.0], [2.0], [0.5]], [8, 16])


def test_poolers_on_a_ramp():
    # feature value = column index; the box covers feature cells 1..3 at stride 16
    feature = torch.arange(6.0).repeat(6, 1)[None, None]
    boxes = [torch.tensor([[16.0, 16.0, 48.0, 48.0]])]
    expected = {"ROIPool": [2.0, 3.0], "ROIAlign": [1.5, 2.5], "ROIAlignV2": [1.0, 2.0]}
    for kind, row in expected.items():
        out = RoIPooler(kind, 2, 1 / 16, 0)(feature, boxes)
        assert out.shape == (1, 1, 2, 2)
        assert out[0, 0].tolist() == [row, row], kind
    with pytest.raises(ValueError, match="ROIAlignV2"):
        RoIPooler("RoIWarp", 7, 1 / 16)
