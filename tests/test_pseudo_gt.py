"""Bi-level pseudo-GT and the dense-CRF refinement, on downscaled real SOD images with their DSS maps."""

import cv2
import numpy as np
import pytest

from relearn_core.errors import RelearnError
from relearn_core.imageio import list_by_stem, read_image, read_map, read_mask
from relearn_core.relearning.pseudo_gt import (
    AGGRESSIVE_THETA,
    CONSERVATIVE_THETA,
    bilevel_pseudo_gt,
    crf_refine,
    crf_salient_mask,
)

LONG_SIDE = 200


def _small(array, size, interpolation):
    return cv2.resize(array, size, interpolation=interpolation)


@pytest.fixture(scope="module")
def samples(sod_dir):
    maps = list_by_stem(sod_dir / "maps" / "DSS")
    images = list_by_stem(sod_dir / "images")
    masks = list_by_stem(sod_dir / "gt")
    found = []
    for stem in sorted(maps)[::30]:  # 10 images spread over the set
        image = read_image(images[stem])
        height, width = image.shape[:2]
        scale = LONG_SIDE / max(height, width)
        size = (round(width * scale), round(height * scale))
        found.append(
            (
                _small(image, size, cv2.INTER_AREA),
                _small(read_map(maps[stem]).astype(np.float32), size, cv2.INTER_AREA),
                _small(read_mask(masks[stem]).astype(np.uint8), size, cv2.INTER_NEAREST).astype(bool),
            )
        )
    return found


@pytest.fixture(scope="module")
def crf_masks(samples):
    return [
        (crf_salient_mask(image, base, AGGRESSIVE_THETA), crf_salient_mask(image, base, CONSERVATIVE_THETA))
        for image, base, _ in samples
    ]


def test_trusted_labels_are_mostly_right_and_unsure_pixels_lie_between_the_two(samples):
    counts = {"salient": [0, 0], "unsure": [0, 0], "background": [0, 0]}  # [ground-truth salient, all]
    for image, base, gt in samples:
        pseudo = bilevel_pseudo_gt(image, base)
        assert not (pseudo.salient & pseudo.background).any()
        for name in counts:
            region = getattr(pseudo, name)
            counts[name][0] += (region & gt).sum()
            counts[name][1] += region.sum()
    salient_rate = {name: right / max(total, 1) for name, (right, total) in counts.items()}
    assert counts["unsure"][1] > 0
    trusted_right = counts["salient"][0] + counts["background"][1] - counts["background"][0]
    assert trusted_right / (counts["salient"][1] + counts["background"][1]) > 0.75  # the paper: about 81 % at least
    assert salient_rate["salient"] > salient_rate["unsure"] > salient_rate["background"]


def test_conservative_salient_region_lies_almost_inside_the_aggressive_one(crf_masks):
    # The wide, colour-tolerant CRFc smooths away thin or weak salient parts; the near-local CRFa keeps them.
    aggressive_only = sum((a & ~c).sum() for a, c in crf_masks)
    conservative_only = sum((c & ~a).sum() for a, c in crf_masks)
    pixels = sum(a.size for a, _ in crf_masks)
    assert aggressive_only > 5 * conservative_only
    assert conservative_only / pixels < 0.01


def test_aggressive_crf_stays_close_to_the_thresholded_base(samples, crf_masks):
    agreement = np.mean([((base > 0.5) == a).mean() for (_, base, _), (a, _) in zip(samples, crf_masks)])
    assert agreement > 0.97


def test_pseudo_gt_is_the_intersection_and_complement_of_union_of_the_two_crfs(samples, crf_masks):
    image, base, _ = samples[0]
    aggressive, conservative = crf_masks[0]
    pseudo = bilevel_pseudo_gt(image, base)
    np.testing.assert_array_equal(pseudo.salient, aggressive & conservative)
    np.testing.assert_array_equal(pseudo.background, ~(aggressive | conservative))


def test_crf_refine_gives_a_soft_map_that_follows_the_base_and_moves_it_toward_image_edges(samples):
    changed = 0.0
    for image, base, _ in samples:
        refined = crf_refine(image, base)
        assert refined.shape == base.shape and refined.dtype == np.float32
        assert refined.min() >= 0.0 and refined.max() <= 1.0
        assert ((refined > 0.5) == (base > 0.5)).mean() > 0.9
        changed += np.abs(refined - base).mean()
    assert changed / len(samples) > 0.005


def test_shape_mismatch_is_a_clear_error(samples):
    image, base, _ = samples[0]
    with pytest.raises(RelearnError, match="does not match"):
        bilevel_pseudo_gt(image, base[:-1])
    with pytest.raises(RelearnError, match="RGB uint8"):
        crf_refine(image.astype(np.float32), base)
