"""The instance-pair filter: Table I labels at superpixel level, balanced sampling, and the trained classifier."""

import numpy as np
import pytest

from relearn_core.errors import RelearnError
from relearn_core.relearning.pair_filter import (
    FilterConfig,
    aligned_iou,
    balanced_sample,
    filter_decisions,
    filter_probability,
    superpixel_shares,
    table1_labels,
    target_instances,
    train_pair_filter,
)


def four_superpixels():
    """A 4x8 image cut into four 4x2 superpixels (ids 0..3 from left to right)."""
    return np.repeat(np.arange(4), 2)[None, :].repeat(4, 0)


def test_target_iou_follows_the_ground_truth_class_of_each_superpixel():
    labels = four_superpixels()
    gt = np.zeros((4, 8), bool)
    gt[:, 0:4] = True  # superpixels 0 and 1 salient
    pgt_salient = np.zeros((4, 8), bool)
    pgt_background = np.zeros((4, 8), bool)
    pgt_salient[:, 0:2] = True  # superpixel 0: pGT trusts it salient -> IoU 1
    pgt_salient[:2, 2:4] = True  # superpixel 1: half trusted salient, half unsure -> IoU 0.5
    pgt_salient[:, 4:6] = True  # superpixel 2: GT background, pGT says salient -> IoU 0 (hard)
    pgt_background[:, 6:8] = True  # superpixel 3: both background -> IoU 1
    facts = target_instances(labels, gt, pgt_salient, pgt_background)
    np.testing.assert_allclose(facts.pgt_iou, [1.0, 0.5, 0.0, 1.0])
    np.testing.assert_array_equal(facts.gt_class, [True, True, False, False])
    np.testing.assert_allclose(facts.salient_share, [1, 1, 0, 0])


def test_unsure_pseudo_gt_makes_a_hard_target():
    labels = four_superpixels()
    gt = np.zeros((4, 8), bool)
    nothing = np.zeros((4, 8), bool)
    facts = target_instances(labels, gt, nothing, nothing)  # every pixel unsure
    assert (facts.pgt_iou == 0).all()
    assert table1_labels(facts.pgt_iou, np.ones((4, 1))).all()


def test_aligned_iou_compares_shares_of_the_target_class():
    target_class = np.array([True, True, False, False])
    target_share = np.array([1.0, 0.8, 1.0, 1.0])
    aligned_salient = np.array([0.95, 0.8, 0.0, 0.9])
    aligned_background = np.array([0.0, 0.1, 0.5, 0.0])
    iou = aligned_iou(target_class, target_share, aligned_salient, aligned_background)
    np.testing.assert_allclose(iou, [0.95, 1.0, 0.5, 0.0])


def test_table1_thresholds_are_inclusive_for_t1_and_strict_for_t2():
    pgt_iou = np.array([0.15, 0.16, 0.0])
    pair_iou = np.array([[0.91, 0.90], [0.95, 0.95], [1.0, 0.2]])
    np.testing.assert_array_equal(table1_labels(pgt_iou, pair_iou), [[True, False], [False, False], [True, False]])


def test_superpixel_shares_counts_pixels_per_superpixel():
    labels = four_superpixels()
    mask = np.zeros((4, 8), bool)
    mask[0, :] = True
    np.testing.assert_allclose(superpixel_shares(labels, mask, 5), [0.25, 0.25, 0.25, 0.25, 0.0])


def test_balanced_sample_keeps_the_paper_ratio_and_scales_down():
    labels = np.r_[np.ones(300, bool), np.zeros(1000, bool)]
    chosen = balanced_sample(labels, seed=0, positives=30, negatives=50)
    assert labels[chosen].sum() == 30 and (~labels[chosen]).sum() == 50
    few = np.r_[np.ones(6, bool), np.zeros(1000, bool)]
    chosen = balanced_sample(few, seed=0, positives=30, negatives=50)
    assert few[chosen].sum() == 6 and (~few[chosen]).sum() == 10
    np.testing.assert_array_equal(chosen, balanced_sample(few, seed=0, positives=30, negatives=50))


def separable_pairs(rng, n=1200, dim=6):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = x[:, 0] + 0.5 * x[:, 3] > 0.8
    return x, y


def test_filter_learns_which_pairs_are_valuable_and_is_deterministic(rng):
    x, y = separable_pairs(rng)
    config = FilterConfig(hidden=(32, 16), epochs=40, positives=200, negatives=333, seed=3)
    model = train_pair_filter(x[:800], y[:800], config)
    decided = filter_decisions(model, x[800:])
    accuracy = (decided == y[800:]).mean()
    assert accuracy > 0.9, accuracy
    again = train_pair_filter(x[:800], y[:800], config)
    np.testing.assert_array_equal(filter_probability(model, x[800:]), filter_probability(again, x[800:]))


def test_filter_refuses_data_without_enough_positives(rng):
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = np.zeros(100, bool)
    y[:3] = True
    with pytest.raises(RelearnError, match="at least 20 positive"):
        train_pair_filter(x, y, FilterConfig(min_positives=20))
