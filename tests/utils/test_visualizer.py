"""The visualizer: labels that do not hide each other, sizes that follow the picture, and ground truth
vs detection pictures drawn on the original image."""
import numpy as np
import torch

from detres.utils.visualizer import _intersects, class_colour, draw_instances, gt_vs_pred_picture, place_label


def test_labels_of_boxes_with_the_same_corner_do_not_overlap():
    placed = []
    for box in [(10, 40, 100, 90), (10, 40, 60, 120), (10, 40, 80, 70)]:
        placed.append(place_label(box, (50, 12), (200, 300), placed))
    assert placed[0] == (10, 28, 60, 40)  # above the box
    assert placed[1] == (10, 40, 60, 52)  # inside the top of the box
    assert placed[2] == (10, 52, 60, 64)  # shifted down
    assert not any(_intersects(a, b) for i, a in enumerate(placed) for b in placed[i + 1:])
    # at the image's top edge "above" is clamped into the image, then the next one moves down
    top = [place_label((0, 0, 50, 50), (30, 10), (100, 100), [])]
    top.append(place_label((0, 0, 50, 50), (30, 10), (100, 100), top))
    assert top == [(0, 0, 30, 10), (0, 10, 30, 20)]


def test_drawn_labels_of_overlapping_boxes_are_both_visible():
    image = np.zeros((200, 300, 3), np.uint8)
    out = draw_instances(image, np.array([[20, 60, 200, 180], [20, 60, 120, 150]]), [1, 4], [0.9, 0.8], ["a"] * 5)
    # the first label's background is above the box, the second's inside its top, both at the left edge
    assert (out[55, 20] == class_colour(1)).all()
    assert (out[65, 20] == class_colour(4)).all()
    assert (out[100, 20] == class_colour(4)).all()  # the shared left edge, the second box drawn last


def test_label_size_follows_the_picture():
    def label_rows(size):
        image = np.zeros((size, size, 3), np.uint8)
        out = draw_instances(image, np.array([[size / 4, size / 2, size * 3 / 4, size * 3 / 4]]), [0], None, ["x"])
        column = out[: size // 2, size // 4]
        return int((column == class_colour(0)).all(axis=1).sum())

    assert label_rows(1600) >= 2.5 * label_rows(320) > 0


def test_gt_vs_pred_picture_is_drawn_on_the_original_image():
    image = np.full((100, 200, 3), 30, np.uint8)
    outputs = {"boxes": torch.tensor([[20.0, 30.0, 180.0, 90.0], [0.0, 0.0, 10.0, 10.0]]),
               "scores": torch.tensor([0.9, 0.1]), "classes": torch.tensor([1, 1])}
    picture = gt_vs_pred_picture(image, np.array([[10.0, 40.0, 60.0, 80.0]]), [0], outputs, ["x", "y"])
    assert picture.shape == (3, 100, 404) and picture.dtype == np.uint8
    bgr = picture.transpose(1, 2, 0)[:, :, ::-1]
    left, gap, right = bgr[:, :200], bgr[:, 200:204], bgr[:, 204:]
    assert (gap == 255).all()
    assert (left[60, 10] == class_colour(0)).all() and (left[60, 35] == 30).all()  # ground truth, original pixels
    assert (right[60, 180] == class_colour(1)).all() and (right[60, 100] == 30).all()  # detection as given
    assert (right[5, 5] == 30).all()  # the 0.1-score box is not drawn
