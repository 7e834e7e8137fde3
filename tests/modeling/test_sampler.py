import pytest
import torch

from detres.modeling.sampler import BalancedSampler


def _masks(num_pos: int, num_neg: int, num_ignored: int):
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignored)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    return labels == 1, labels == 0


@pytest.mark.parametrize(
    "num_pos,num_neg,expected",
    [(30, 900, (30, 226)), (200, 900, (128, 128)), (10, 20, (10, 20)), (0, 500, (0, 256))],
)
def test_counts(num_pos, num_neg, expected):
    pos, neg = _masks(num_pos, num_neg, 70)
    torch.manual_seed(1)
    pos_idx, neg_idx = BalancedSampler(256, 0.5)(pos, neg)
    assert (pos_idx.numel(), neg_idx.numel()) == expected
    assert pos[pos_idx].all() and neg[neg_idx].all()
    assert len(set(pos_idx.tolist())) == pos_idx.numel() and len(set(neg_idx.tolist())) == neg_idx.numel()


def test_roi_fraction_and_randomness():
    pos, neg = _masks(400, 2000, 0)
    sampler = BalancedSampler(512, 0.25)
    torch.manual_seed(0)
    a = sampler(pos, neg)
    b = sampler(pos, neg)
    assert (a[0].numel(), a[1].numel()) == (128, 384)
    assert set(a[0].tolist()) != set(b[0].tolist())  # a fresh draw each call
    torch.manual_seed(0)
    c = sampler(pos, neg)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])  # reproducible under a seed


def test_invalid():
    with pytest.raises(ValueError):
        BalancedSampler(0, 0.5)
    with pytest.raises(ValueError):
        BalancedSampler(256, 1.5)


def test_sample_labels_marks_the_drawn_elements_and_ignores_the_rest():
    torch.manual_seed(0)
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, -1, -1])
    sampled = BalancedSampler(4, 0.5).sample_labels(labels)
    assert (sampled == 1).sum() == 2 and (sampled == 0).sum() == 2 and (sampled == -1).sum() == 6
    assert (labels[sampled == 1] == 1).all() and (labels[sampled == 0] == 0).all()
    assert (sampled[8:] == -1).all()
