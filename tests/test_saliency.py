"""Superpixel scores back to pixels (spatial weighting) and the join with the base map, on real SOD crops."""

import cv2
import numpy as np
import pytest

from relearn_core.correspondence.regions import superpixels
from relearn_core.errors import RelearnError
from relearn_core.evaluation.metrics import DatasetPR
from relearn_core.imageio import list_by_stem, read_image, read_map, read_mask
from relearn_core.records import Superpixels
from relearn_core.relearning.pseudo_gt import bilevel_pseudo_gt
from relearn_core.relearning.saliency import (
    COLOUR_SIGMA,
    POSITION_SIGMA,
    adjacency,
    join_with_base,
    paint,
    spatial_weighting,
    spreading,
    superpixel_means,
)


@pytest.fixture(scope="module")
def samples(sod_dir):
    maps = list_by_stem(sod_dir / "maps" / "DSS")
    images = list_by_stem(sod_dir / "images")
    masks = list_by_stem(sod_dir / "gt")
    found = []
    for stem in sorted(maps)[5::37]:  # 8 images spread over the set
        image = read_image(images[stem])
        size = (image.shape[1] // 2, image.shape[0] // 2)
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        base = cv2.resize(read_map(maps[stem]).astype(np.float32), size, interpolation=cv2.INTER_AREA)
        gt = cv2.resize(read_mask(masks[stem]).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
        found.append((image, base, gt, superpixels(image, count=200)))
    return found


def test_adjacency_lists_each_superpixel_and_its_touching_neighbours():
    labels = np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]], dtype=np.int32)
    table = adjacency(Superpixels(labels, 4))
    neighbours = [set(row[1:]) - {i} for i, row in enumerate(table)]
    assert (table[:, 0] == np.arange(4)).all()
    assert neighbours == [{1, 2, 3}, {0, 2}, {0, 1, 3}, {0, 2}]


def test_spatial_weighting_is_a_convex_combination_of_neighbouring_scores(samples, rng):
    image, _, _, regions = samples[0]
    scores = rng.uniform(0.2, 0.7, regions.count)
    weighted = spatial_weighting(image, regions, scores)
    assert weighted.shape == regions.labels.shape and np.isfinite(weighted).all()
    assert weighted.min() >= 0.2 - 1e-6 and weighted.max() <= 0.7 + 1e-6
    np.testing.assert_allclose(spatial_weighting(image, regions, np.full(regions.count, 0.3)), 0.3, atol=1e-6)


def test_spatial_weighting_keeps_a_perfect_superpixel_labelling_better_than_painting(samples):
    painted, weighted = DatasetPR(), DatasetPR()
    for image, _, gt, regions in samples:
        truth = superpixel_means(gt.astype(np.float64), regions)
        painted.step(paint(regions, truth), gt)
        weighted.step(np.clip(spatial_weighting(image, regions, truth), 0, 1), gt)
    assert weighted.results()["max_f"] > painted.results()["max_f"]


def test_one_spreading_serves_any_scores_as_the_weighting_written_out_per_pixel(samples, rng):
    image, _, _, regions = samples[1]
    spread = spreading(image, regions)
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    flat = regions.labels.ravel()
    mean_colour = np.stack([superpixel_means(lab[..., k], regions) for k in range(3)], 1)
    centroids = regions.centroids()
    spacing = np.sqrt(regions.labels.size / regions.count)
    table = adjacency(regions)
    for unscored_share in (0.0, 0.5):
        scores = rng.uniform(0, 1, regions.count)
        scores[rng.uniform(size=regions.count) < unscored_share] = np.nan
        value = spread(scores)
        for pixel in rng.choice(flat.size, 200, replace=False):
            y, x = divmod(pixel, regions.labels.shape[1])
            candidates = np.unique(table[flat[pixel]])
            candidates = candidates[np.isfinite(scores[candidates])]
            if not len(candidates):
                assert np.isnan(value[y, x])
                continue
            colour = ((lab[y, x] - mean_colour[candidates]) ** 2).sum(1) / (2 * COLOUR_SIGMA**2)
            place = ((np.array([x, y]) - centroids[candidates]) ** 2).sum(1) / (2 * (POSITION_SIGMA * spacing) ** 2)
            weight = np.exp(-(colour + place) + (colour + place).min())
            assert value[y, x] == pytest.approx((weight * scores[candidates]).sum() / weight.sum(), abs=1e-5)


def test_unscored_superpixels_take_no_part(samples):
    image, _, _, regions = samples[0]
    scores = np.full(regions.count, np.nan)
    scores[0] = 0.8
    weighted = spatial_weighting(image, regions, scores)
    assert np.allclose(weighted[regions.labels == 0], 0.8)
    table = adjacency(regions)
    far = [label for label in range(regions.count) if 0 not in table[label]]
    assert far and np.isnan(weighted[np.isin(regions.labels, far)]).all()
    with pytest.raises(RelearnError, match="scores"):
        spatial_weighting(image, regions, scores[:-1])


@pytest.fixture(scope="module")
def joined(samples):
    out = []
    for image, base, gt, regions in samples:
        pseudo = bilevel_pseudo_gt(image, base)
        truth = superpixel_means(gt.astype(np.float64), regions)  # an oracle re-learner
        out.append((base, gt, pseudo, join_with_base(image, base, regions, truth, pseudo.unsure)))
    return out


def test_join_keeps_trusted_pixels_exactly_equal_to_the_base(joined):
    for base, _, pseudo, final in joined:
        trusted = ~pseudo.unsure
        np.testing.assert_array_equal(final[trusted], base[trusted])
        assert final.dtype == np.float32 and final.min() >= 0 and final.max() <= 1


def test_join_with_an_oracle_moves_unsure_pixels_toward_the_truth(joined):
    base_error = final_error = 0.0
    for base, gt, pseudo, final in joined:
        base_error += np.abs(base - gt)[pseudo.unsure].sum()
        final_error += np.abs(final - gt)[pseudo.unsure].sum()
    assert final_error < base_error


def test_join_without_any_disagreement_returns_the_base(samples):
    image, base, _, regions = samples[1]
    agreeing = superpixel_means(base, regions)  # a re-learner that returns its prior, the base's mean
    np.testing.assert_allclose(join_with_base(image, base, regions, agreeing), base, atol=1e-6)
    no_prediction = np.full(regions.count, np.nan)
    np.testing.assert_allclose(join_with_base(image, base, regions, no_prediction), base, atol=1e-6)


def test_join_keeps_the_base_pixel_detail_inside_a_corrected_superpixel(samples):
    image, base, _, regions = samples[2]
    scores = superpixel_means(base, regions)
    spread = np.sqrt(np.maximum(superpixel_means(base**2, regions) - scores**2, 0))
    label = int(np.argmax(np.where(scores < 0.5, spread, 0)))  # a mostly dark superpixel with the most detail
    scores[label] = 0.95
    final = join_with_base(image, base, regions, scores)
    inside = regions.labels == label
    assert final[inside].mean() > base[inside].mean() + 0.025  # near-binary dark pixels move least
    # not flattened to one value as painting would: the base's variation inside the superpixel survives
    assert np.corrcoef(final[inside], base[inside])[0, 1] > 0.8
    assert final[inside].std() > 0.3 * base[inside].std()
