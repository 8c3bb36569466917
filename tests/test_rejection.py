"""Class early rejection in round I (model.rejection, DPSeg.forward_kept, RefineConfig)."""

from __future__ import annotations

import pytest
import torch

from model.refine import RefineConfig, TwoRoundSegmenter
from model.rejection import REJECTED_LOGIT, kept_classes, scatter_kept, standout
from tests.test_model import K, build, random_prompts


def test_kept_classes_by_threshold_top_k_and_bound_by_hand():
    logit = lambda p: torch.logit(torch.tensor(p))  # noqa: E731
    coarse = torch.full((2, 5, 1, 2), float(logit(0.01)))
    coarse[0, :, 0, 0] = logit(torch.tensor([0.9, 0.1, 0.8, 0.01, 0.2]).tolist())
    coarse[0, :, 0, 1] = logit(torch.tensor([0.1, 0.7, 0.01, 0.6, 0.2]).tolist())
    # image 1: nothing reaches 0.5; its highest peak (class 4) is kept all the same
    coarse[1, :, 0, 0] = logit(torch.tensor([0.01, 0.01, 0.01, 0.3, 0.4]).tolist())
    ids = lambda kept: [k.tolist() for k in kept]  # noqa: E731
    assert ids(kept_classes(coarse, threshold=0.5)) == [[0, 1, 2, 3], [4]]
    assert ids(kept_classes(coarse, threshold=0.15)) == [[0, 1, 2, 3, 4], [3, 4]]
    # top 1: class 0 ranks first at position 0, class 1 at position 1
    assert ids(kept_classes(coarse, threshold=0.15, top_k=1)) == [[0, 1], [4]]
    # at most 3, by rank: the classes ranked first somewhere (0, 1), then the best peak (2)
    rank = {"order": "rank"}
    assert ids(kept_classes(coarse, threshold=0.5, max_classes=3, **rank)) == [[0, 1, 2], [4]]
    # at most 2: the classes ranked first somewhere (0, 1), though class 2's peak beats class 1's
    assert ids(kept_classes(coarse, threshold=0.5, max_classes=2, **rank)) == [[0, 1], [4]]
    assert kept_classes(coarse, top_k=99)[0].tolist() == [0, 1, 2, 3, 4]  # k > K: every class


def test_the_bound_keeps_the_classes_that_stand_out_of_the_vocabulary():
    """What the probe's 847 unknown names look like to the coarse head: three toy classes at
    their object (position 0; class 2 a weak third), 30 unknown names low there but spread over
    the background (position 1, where one of them ranks first). With a bound of 3, "rank" keeps
    that name over class 2; "standout" keeps classes 0-2: class 2 is 2.5 standard deviations
    above the vocabulary at its object, no name more than 1.5 anywhere."""
    coarse = torch.full((1, 33, 1, 2), -6.0)
    coarse[0, :3, 0, 0] = torch.tensor([3.0, 2.5, 1.0])
    coarse[0, 3:, 0, 0] = torch.linspace(-5.0, -4.4, 30)
    coarse[0, 3:, 0, 1] = torch.linspace(-4.0, 1.0, 30)
    z = standout(coarse)
    at_object = coarse[0, :, 0, 0]
    assert torch.allclose(z[0, 2], (1.0 - at_object.mean()) / at_object.std())
    assert z[0, 2] > 2.5 and z[0, 3:].max() < 1.5
    assert kept_classes(coarse, max_classes=3)[0].tolist() == [0, 1, 2]
    assert kept_classes(coarse, max_classes=3, order="rank")[0].tolist() == [0, 1, 32]
    assert kept_classes(coarse, threshold=0.8, max_classes=3)[0].tolist() == [0, 1]  # passing
    assert standout(coarse[:, :1]).tolist() == [[3.0]]  # one class: its peak


def test_scatter_kept_fills_the_rejected_classes():
    logits = torch.arange(2 * 2 * 1 * 1, dtype=torch.float).view(2, 2, 1, 1)
    out = scatter_kept(logits, [torch.tensor([1, 3]), torch.tensor([0])], num_classes=4)
    assert out[:, :, 0, 0].tolist() == [
        [REJECTED_LOGIT, 0.0, REJECTED_LOGIT, 1.0],
        [2.0, REJECTED_LOGIT, REJECTED_LOGIT, REJECTED_LOGIT],
    ]


@pytest.mark.parametrize("center", [False, True])
def test_kept_classes_decode_exactly_as_without_rejection(center):
    model, dims = build("tiny-convnext", center_prompts=center)
    model.eval()
    images, prompts = torch.rand(2, 3, 128, 128), random_prompts(dims)
    with torch.no_grad():
        full = model(images, prompts)
        coarse = model.coarse_logits(full.features, prompts)  # 1/16 of 128 px
        out, kept = model.forward_kept(images, prompts, top_k=1, max_classes=3)
        ranked, by_rank = model.forward_kept(images, prompts, top_k=1, max_classes=3, order="rank")
        by_threshold, _ = model.forward_kept(images, prompts, threshold=0.5)
    assert coarse.shape == (2, K, 8, 8)
    assert out.logits.shape == full.logits.shape == (2, K, 128, 128)
    for b, ids in enumerate(kept):
        assert 1 <= len(ids) <= 3
        torch.testing.assert_close(out.logits[b, ids], full.logits[b, ids])
        rejected = torch.ones(K, dtype=torch.bool)
        rejected[ids] = False
        assert (out.logits[b, rejected] == REJECTED_LOGIT).all()
        # the kept ones are those the coarse head ranks first somewhere, the 3 that stand out
        # most (or, by rank, the 3 highest peaks)
        top1 = coarse[b].argmax(dim=0).unique()
        stands = standout(coarse)[b]
        expect = top1[stands[top1].argsort(descending=True)[:3]].sort().values
        assert ids.tolist() == expect.tolist()
        peaks = coarse[b].amax(dim=(-2, -1))
        expect = top1[peaks[top1].argsort(descending=True)[:3]].sort().values
        assert by_rank[b].tolist() == expect.tolist()
        torch.testing.assert_close(ranked.logits[b, by_rank[b]], full.logits[b, by_rank[b]])
    passing = coarse.sigmoid().amax(dim=(-2, -1)) >= 0.5  # (2, K)
    for b in range(2):
        if passing[b].any():
            assert (by_threshold.logits[b, ~passing[b]] == REJECTED_LOGIT).all()
            torch.testing.assert_close(
                by_threshold.logits[b, passing[b]], full.logits[b, passing[b]]
            )


def test_round_two_refines_only_kept_classes_and_records_them():
    model, dims = build("tiny-convnext")
    model.eval()
    config = RefineConfig(rounds=1, rejection_threshold=0.3, rejection_max_classes=2)
    segmenter = TwoRoundSegmenter(model, None, config)
    images, prompts = torch.rand(2, 3, 128, 128), random_prompts(dims)
    with torch.no_grad():
        logits = segmenter(images, prompts)
    kept = segmenter.kept
    assert kept.shape == (K,) and 1 <= int(kept.sum()) <= 4  # at most 2 in each of 2 images
    labels = logits.argmax(dim=1)
    assert kept[labels.unique()].all()  # every predicted class was kept
    # round II's detected classes come from round I's argmax: kept classes only
    classes, _ = segmenter.refined_classes(labels, K)
    assert all(kept[c].all() for c in classes)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        (
            {"rejection_threshold": 1.0},
            r"model.inference.rejection_threshold=1.0: must be in \(0, 1\)",
        ),
        ({"rejection_top_k": 0}, r"model.inference.rejection_top_k=0: must be >= 1"),
        ({"rejection_max_classes": 0}, r"model.inference.rejection_max_classes=0: must be >= 1"),
    ],
)
def test_bad_rejection_settings(setting, match):
    with pytest.raises(ValueError, match=match):
        RefineConfig(**setting)


def test_coarse_loss_marks_a_cell_where_any_pixel_of_a_class_is():
    from model.lightning import coarse_loss

    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1, 1] = 1  # one pixel of class 1, in the top-left 2x2 cell
    labels[0, 3, 3] = -1  # an ignore pixel counts for no class
    confident = torch.full((1, 2, 2, 2), 10.0)  # every class everywhere, with logit 10
    # class 0 is in all 4 cells, class 1 in 1: 3 of 8 targets are negatives, each costing
    # BCE(10, 0) = 10 + log(1 + e^-10); positives cost log(1 + e^-10)
    expected = (3 * 10 + 8 * torch.log1p(torch.exp(torch.tensor(-10.0)))) / 8
    torch.testing.assert_close(coarse_loss(confident, labels), expected)
