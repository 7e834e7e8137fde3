import math

import pytest
import torch

from detres.modeling.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder, box_regression_loss
from detres.modeling.box_ops import clip_boxes, inside_image, nonempty, pairwise_ioa, scale_boxes


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 180 + 20  # size ratios < 62.5: no clamping
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    coder = BoxCoder(weights)
    src, dst = _random_boxes(200, 0), _random_boxes(200, 1)
    deltas = coder.encode(src, dst)
    assert deltas.shape == (200, 4)
    torch.testing.assert_close(coder.decode(deltas, src), dst, atol=1e-3, rtol=1e-5)


def test_known_deltas():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    src = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])
    dst = torch.tensor([[5.0, 5.0, 15.0, 25.0], [0.0, 0.0, 20.0, 40.0]])
    expected = torch.tensor([[5.0, 2.5, 0.0, 0.0], [5.0, 5.0, 5 * math.log(2), 5 * math.log(2)]])
    torch.testing.assert_close(coder.encode(src, dst), expected)
    torch.testing.assert_close(coder.decode(expected, src), dst)


def test_decode_class_specific_and_clamp():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    src = torch.tensor([[10.0, 10.0, 26.0, 26.0]])  # centre 18, size 16
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 100.0, 0.0]])  # two classes
    out = coder.decode(deltas, src)
    assert out.shape == (1, 8)
    torch.testing.assert_close(out[0, :4], src[0])
    # class 1: centre moved by (+8, -8); width clamped to exp(log(1000/16)) * 16 = 1000.
    torch.testing.assert_close(out[0, 4:], torch.tensor([26.0 - 500.0, 2.0, 26.0 + 500.0, 18.0]))
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(62.5))


def test_regression_losses():
    pred = torch.tensor([[0.0, 0.05, 1.0, -2.0]])
    target = torch.zeros(1, 4)
    assert box_regression_loss(pred, target, "l1").item() == pytest.approx(3.05)
    assert box_regression_loss(pred, target, "smooth_l1", beta=0.0).item() == pytest.approx(3.05)
    # smooth L1 with beta 0.1: 0.5 * 0.05^2 / 0.1 + (1 - 0.05) + (2 - 0.05)
    assert box_regression_loss(pred, target, "smooth_l1", beta=0.1).item() == pytest.approx(0.0125 + 0.95 + 1.95)
    with pytest.raises(ValueError, match="giou"):
        box_regression_loss(pred, target, "giou")
    with pytest.raises(ValueError, match="wx, wy, ww, wh"):
        BoxCoder((1.0, 1.0))


def test_box_ops():
    boxes = torch.tensor([[-5.0, 2.0, 30.0, 50.0], [10.0, 10.0, 10.0, 20.0], [0.0, 0.0, 8.0, 8.0]])
    torch.testing.assert_close(clip_boxes(boxes, (40, 20))[0], torch.tensor([0.0, 2.0, 20.0, 40.0]))
    assert nonempty(boxes).tolist() == [True, False, True]
    assert nonempty(boxes, threshold=8.0).tolist() == [True, False, False]
    assert inside_image(boxes, (60, 40), 0).tolist() == [False, True, True]
    assert inside_image(boxes, (60, 40), 5).tolist() == [True, True, True]
    ioa = pairwise_ioa(boxes, torch.tensor([[0.0, 0.0, 4.0, 8.0]]))
    torch.testing.assert_close(ioa[:, 0], torch.tensor([4 * 6 / (35 * 48), 0.0, 0.5]))
    torch.testing.assert_close(scale_boxes(boxes[2:], 2.0, 0.5), torch.tensor([[0.0, 0.0, 16.0, 4.0]]))
