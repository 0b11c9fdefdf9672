"""Bi-level alignment (Eqs. (1)-(3)) on crops of a real SOD image with known displacements."""

import numpy as np
import pytest

from relearn_core.correspondence.align import (
    AlignParams,
    align_correspondence,
    membership,
    object_support,
    proposal_dissimilarity,
    superpixel_correspondence,
)
from relearn_core.correspondence.regions import proposals, superpixels
from relearn_core.imageio import read_image, read_mask
from relearn_core.records import Proposals, Superpixels

SHIFT = (14, 9)  # the neighbour is the target's window moved by this many pixels (dx, dy)


def align_pair(target_sp, neighbour_sp, target_pr, neighbour_pr, flow, cost, params=AlignParams()):
    """The alignment of one pair from its regions and flow, as the align stage computes it."""
    correspondence = superpixel_correspondence(target_sp, neighbour_sp, flow, cost)
    return align_correspondence(
        correspondence, membership(target_pr, target_sp), membership(neighbour_pr, neighbour_sp), params
    )


@pytest.fixture(scope="module")
def shifted_pair(sod_dir):
    """Two overlapping windows of one real image (downscaled), their superpixels, proposals and object masks."""
    image = read_image(sod_dir / "images" / "100080.jpg")[::3, ::3]
    mask = read_mask(sod_dir / "gt" / "100080.png")[::3, ::3]
    dx, dy = SHIFT
    height, width = image.shape[0] - dy, image.shape[1] - dx
    target, target_mask = image[:height, :width], mask[:height, :width]
    neighbour, neighbour_mask = image[dy:, dx:], mask[dy:, dx:]
    regions = []
    for crop in (target, neighbour):
        regions.append((superpixels(crop, 150), proposals(crop, count=30, candidates=300, edge_method="sobel")))
    return target_mask, neighbour_mask, regions


def majority(sp: Superpixels, mask: np.ndarray) -> np.ndarray:
    inside = np.bincount(sp.labels.ravel(), mask.ravel().astype(float), sp.count)
    return inside / np.bincount(sp.labels.ravel(), minlength=sp.count) > 0.5


def agreement(matches, target_labels, neighbour_labels):
    return float(np.mean(target_labels[matches[:, 0]] == neighbour_labels[matches[:, 1]]))


def test_superpixel_distance_is_the_mean_cost_of_the_pixels_that_land(rng):
    # 4x4 target in two superpixels (left, right half), 4x4 neighbour in two (top, bottom half)
    target = Superpixels(np.repeat(np.array([[0, 0, 1, 1]], np.int32), 4, 0), 2)
    neighbour = Superpixels(np.repeat(np.array([[0], [0], [1], [1]], np.int32), 4, 1), 2)
    flow = np.zeros((4, 4, 2), np.float32)
    flow[0, 0] = (10, 0)  # leaves the neighbour: ignored
    cost = rng.random((4, 4)).astype(np.float32)
    cost[1, 1] = np.nan  # not finite: ignored
    result = superpixel_correspondence(target, neighbour, flow, cost)
    valid = np.ones((4, 4), bool)
    valid[0, 0] = valid[1, 1] = False
    for i, cols in ((0, slice(0, 2)), (1, slice(2, 4))):
        for j, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
            block = np.zeros((4, 4), bool)
            block[rows, cols] = True
            chosen = block & valid
            assert result.counts[i, j] == chosen.sum()
            assert result.distances[i, j] == pytest.approx(cost[chosen].mean())


def test_proposal_dissimilarity_follows_the_truncated_sum_of_eq3():
    # 3 target superpixels, 3 neighbour superpixels; matches 0->0 (d 1), 1->1 (d 2), 2 unmatched
    matches = np.array([0, 1, -1])
    distances = np.array([1.0, 2.0, 0.0])
    target_members = np.array([[1, 1, 0], [0, 0, 1]], bool)  # P0 = {0, 1}, P1 = {2}
    neighbour_members = np.array([[1, 1, 0], [1, 0, 1]], bool)  # Q0 = {0, 1}, Q1 = {0, 2}
    tau = 5.0
    g = proposal_dissimilarity(matches, distances, target_members, neighbour_members, tau)
    assert g[0, 0] == pytest.approx((1 + 2) / 2 + 0.0)  # both matched inside, every Q0 superpixel reached
    assert g[0, 1] == pytest.approx((1 + tau) / 2 + tau * 1 / 2)  # 1 goes outside Q1; Q1's superpixel 2 unreached
    assert g[1, 0] == pytest.approx(tau + tau)  # P1's superpixel is unmatched, nothing of Q0 reached
    assert np.isinf(proposal_dissimilarity(matches, distances, np.zeros((1, 3), bool), neighbour_members, tau)).all()


def test_true_displacement_gives_consistent_matches(shifted_pair):
    target_mask, neighbour_mask, ((target_sp, target_pr), (neighbour_sp, neighbour_pr)) = shifted_pair
    height, width = target_sp.labels.shape
    flow = np.zeros((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = -SHIFT[0], -SHIFT[1]  # target (x, y) is neighbour (x - dx, y - dy)
    cost = np.full((height, width), 0.5, np.float32)
    alignment = align_pair(target_sp, neighbour_sp, target_pr, neighbour_pr, flow, cost)
    labels_t, labels_n = majority(target_sp, target_mask), majority(neighbour_sp, neighbour_mask)
    assert agreement(alignment.superpixel_matches, labels_t, labels_n) > 0.95
    # the object-level selection keeps the better half of the matches; without it most superpixels keep one
    flow_matches = superpixel_correspondence(target_sp, neighbour_sp, flow, cost).flow_matches()
    assert 0.4 * len(flow_matches) <= len(alignment.superpixel_matches) <= 0.6 * len(flow_matches)
    everything = align_pair(target_sp, neighbour_sp, target_pr, neighbour_pr, flow, cost, AlignParams(object_keep=1.0))
    assert len(everything.superpixel_matches) > 0.7 * target_sp.count
    assert agreement(everything.superpixel_matches, labels_t, labels_n) > 0.9
    # each target proposal gets one neighbour proposal (K shrinks to 1), and each matched superpixel one partner
    assert len(np.unique(alignment.proposal_matches[:, 0])) == len(alignment.proposal_matches)
    assert len(np.unique(alignment.superpixel_matches[:, 0])) == len(alignment.superpixel_matches)
    assert np.all(alignment.superpixel_distances == pytest.approx(0.5))


def test_object_level_consistency_vetoes_flow_errors(shifted_pair, rng):
    """Swap the flow of the object with a far background region: SIFT Flow alone matches object to background
    there; the bi-level alignment agrees with the ground truth more often."""
    target_mask, neighbour_mask, ((target_sp, target_pr), (neighbour_sp, neighbour_pr)) = shifted_pair
    height, width = target_sp.labels.shape
    flow = np.zeros((height, width, 2), np.float32)
    flow[..., 0], flow[..., 1] = -SHIFT[0], -SHIFT[1]
    cost = np.full((height, width), 0.5, np.float32)
    ys, xs = np.nonzero(target_mask)
    # a third of the object (its top) is sent onto background at the top-left corner, with a plausible cost
    wrong = target_mask & (np.arange(height)[:, None] < np.percentile(ys, 33))
    wy, wx = np.nonzero(wrong)
    flow[wy, wx, 0] = rng.uniform(2, 12, wy.size) - wx
    flow[wy, wx, 1] = rng.uniform(2, 12, wy.size) - wy
    cost[wy, wx] = 0.5 + rng.uniform(0, 0.3, wy.size)
    alignment = align_pair(target_sp, neighbour_sp, target_pr, neighbour_pr, flow, cost)
    baseline = superpixel_correspondence(target_sp, neighbour_sp, flow, cost).flow_matches()
    labels_t, labels_n = majority(target_sp, target_mask), majority(neighbour_sp, neighbour_mask)
    assert agreement(alignment.superpixel_matches, labels_t, labels_n) > agreement(baseline, labels_t, labels_n)


def test_membership_uses_superpixel_centroids():
    labels = np.zeros((10, 10), np.int32)
    labels[:, 5:] = 1
    sp = Superpixels(labels, 2)
    boxes = Proposals(np.array([[0, 0, 5, 10], [0, 0, 10, 10], [6, 0, 7, 10]]), np.ones(3))
    assert membership(boxes, sp).tolist() == [[True, False], [True, True], [False, False]]


def test_proposal_dissimilarity_and_object_support_equal_their_definitions_on_random_memberships(rng):
    """Eq. (3) and the object-level support against per-proposal loops over their definitions, with several target
    superpixels matched to one neighbour superpixel (it counts once as reached) and unmatched ones."""
    s_count, t_count, tau = 40, 30, 3.0
    target_members = rng.random((12, s_count)) < 0.3
    neighbour_members = rng.random((9, t_count)) < 0.3
    matches = rng.integers(-1, t_count // 2, s_count)
    distances = rng.random(s_count)
    g = proposal_dissimilarity(matches, distances, target_members, neighbour_members, tau)
    for k, p_k in enumerate(target_members):
        for l, q_l in enumerate(neighbour_members):
            if not p_k.any() or not q_l.any():
                assert np.isinf(g[k, l])
                continue
            inside = p_k & (matches >= 0) & q_l[np.maximum(matches, 0)]
            reached = np.zeros(t_count, bool)
            reached[matches[p_k & (matches >= 0)]] = True
            expected = (distances[inside].sum() + tau * (p_k.sum() - inside.sum())) / p_k.sum() + tau * (
                q_l & ~reached
            ).sum() / q_l.sum()
            assert g[k, l] == pytest.approx(expected, rel=1e-12)
    kept = rng.random((12, 9)) < 0.3
    pairs = rng.random((s_count, t_count)) < 0.2
    support = object_support(kept, target_members, neighbour_members, pairs)
    for i, j in zip(*np.nonzero(pairs)):
        holding = np.flatnonzero(target_members[:, i])
        agreeing = sum(bool((kept[v] & neighbour_members[:, j]).any()) for v in holding)
        assert support[i, j] == (agreeing / len(holding) if len(holding) else 1.0)
    assert not support[~pairs].any()
