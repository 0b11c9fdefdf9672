"""From superpixel predictions back to a pixel map, and the join with the base map (paper Section IV-C, last step).

Spatial weighting: a pixel takes the mean of the scores of its own and its adjacent superpixels, each weighted by how
close the superpixel's mean CIELAB colour is to the pixel's colour and how close its centroid is to the pixel
(Gaussian in both, as the element-to-pixel step of Saliency Filters). Across a superpixel that straddles an object
edge, pixels follow the neighbour they resemble, so the map is not painted in superpixel blocks.

The join keeps the base map exactly where the bi-level pseudo-GT trusts it, and elsewhere applies the re-learner's
verdict as a residual in logit space: per superpixel, the difference between the logit of the re-learned score and the
logit of the base map's mean there (the prior the re-learner was given, so a re-learner that agrees with the base
changes nothing), spread by spatial weighting and added to the logit of every base pixel. The base map's
pixel detail and crispness survive (a near-binary pixel stays near binary unless the correction is large), which
painting superpixel values does not (../shared/reference/sod-refiner-experiment.md: painting costs about 3.5 points of
max F). A superpixel of uniform base values lands exactly on its re-learned score.
"""

from __future__ import annotations

import cv2
import numba
import numpy as np

from ..errors import RelearnError
from ..records import Superpixels

COLOUR_SIGMA = 8.0  #: CIELAB units (L in 0..100)
POSITION_SIGMA = 0.5  #: in superpixel spacings (sqrt(image area / superpixel count))
LOGIT_CLIP = 1e-3  #: base probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit


def superpixel_means(values: np.ndarray, superpixels: Superpixels) -> np.ndarray:
    """(S,) mean of a per-pixel array (H, W) over each superpixel."""
    flat = superpixels.labels.ravel()
    sizes = np.bincount(flat, minlength=superpixels.count)
    return np.bincount(flat, values.ravel().astype(np.float64), superpixels.count) / np.maximum(sizes, 1)


def paint(superpixels: Superpixels, scores: np.ndarray) -> np.ndarray:
    """Each pixel gets its superpixel's score (the blocky baseline that spatial weighting improves on)."""
    return np.asarray(scores, dtype=np.float32)[superpixels.labels]


def _neighbour_pairs(superpixels: Superpixels, include_self: bool) -> np.ndarray:
    """(P, 2) int64 pairs (a, b) of 4-connected superpixels, both directions, sorted by a then b; (a, a) if asked."""
    labels = superpixels.labels.astype(np.int64)
    count = superpixels.count
    first = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    second = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    touching = first != second
    keys = [first[touching] * count + second[touching], second[touching] * count + first[touching]]
    if include_self:
        keys.append(np.arange(count) * (count + 1))
    keys = np.unique(np.concatenate(keys))
    return np.stack(np.divmod(keys, count), 1)


def adjacency(superpixels: Superpixels) -> np.ndarray:
    """(S, K) int: each superpixel's own id followed by its 4-connected neighbours' ids, padded with its own id."""
    count = superpixels.count
    pairs = _neighbour_pairs(superpixels, include_self=False)
    degree = np.bincount(pairs[:, 0], minlength=count)
    table = np.repeat(np.arange(count)[:, None], degree.max(initial=0) + 1, axis=1)
    slot = np.arange(len(pairs)) - np.repeat(np.cumsum(degree) - degree, degree)
    table[pairs[:, 0], slot + 1] = pairs[:, 1]
    return table


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


@numba.njit(cache=True, nogil=True, inline="always")
def _log_weight(pixel_lab, x, y, colour, centroid, colour_factor, position_factor):
    """Log of a candidate superpixel's weight for one pixel: Gaussian in Lab colour and in position."""
    colour_distance = (
        (pixel_lab[0] - colour[0]) ** 2 + (pixel_lab[1] - colour[1]) ** 2 + (pixel_lab[2] - colour[2]) ** 2
    )
    return -colour_factor * colour_distance - position_factor * ((x - centroid[0]) ** 2 + (y - centroid[1]) ** 2)


@numba.njit(cache=True, nogil=True)
def _weighted_pixel_scores(
    lab, labels, width, offsets, per_label, candidates, mean_colour, centroids, scores, colour_factor, position_factor
):
    """Per pixel, the softmax-weighted mean of its candidate superpixels' scores (NaN when it has none)."""
    value = np.full(labels.size, np.nan)
    for pixel in range(labels.size):
        label = labels[pixel]
        y, x = divmod(pixel, width)
        start, stop = offsets[label], offsets[label] + per_label[label]
        top = -np.inf
        for k in range(start, stop):  # first pass: the largest log-weight, to keep the exponentials in range
            c = candidates[k]
            log_weight = _log_weight(lab[pixel], x, y, mean_colour[c], centroids[c], colour_factor, position_factor)
            top = max(top, log_weight)
        total = 0.0
        weighted = 0.0
        for k in range(start, stop):
            c = candidates[k]
            log_weight = _log_weight(lab[pixel], x, y, mean_colour[c], centroids[c], colour_factor, position_factor)
            weight = np.exp(log_weight - top)
            total += weight
            weighted += weight * scores[c]
        if total > 0:
            value[pixel] = weighted / total
    return value


def spatial_weighting(
    image: np.ndarray,
    superpixels: Superpixels,
    scores: np.ndarray,
    colour_sigma: float = COLOUR_SIGMA,
    position_sigma: float = POSITION_SIGMA,
) -> np.ndarray:
    """(H, W) float32: each pixel's colour- and position-weighted mean of its own and adjacent superpixels' scores.

    Scores that are NaN (no prediction) take no part; a pixel whose candidates all lack a score gets NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    count = superpixels.count
    if scores.shape != (count,):
        raise RelearnError(f"expected {count} superpixel scores, got shape {scores.shape}")
    height, width = superpixels.labels.shape
    lab = _lab(image).reshape(-1, 3)
    flat = superpixels.labels.ravel().astype(np.int64)
    sizes = np.maximum(np.bincount(flat, minlength=count), 1)[:, None]
    mean_colour = np.stack([np.bincount(flat, lab[:, k], count) for k in range(3)], 1) / sizes
    centroids = superpixels.centroids()  # (S, 2) x, y
    spacing = np.sqrt(height * width / count)

    # each pixel against its own superpixel and that one's neighbours (CSR lists, self included), unscored left out
    pairs = _neighbour_pairs(superpixels, include_self=True)
    pairs = pairs[np.isfinite(scores[pairs[:, 1]])]
    per_label = np.bincount(pairs[:, 0], minlength=count)
    offsets = np.cumsum(per_label) - per_label
    value = _weighted_pixel_scores(
        lab.astype(np.float64),
        flat,
        width,
        offsets,
        per_label,
        pairs[:, 1].copy(),
        mean_colour,
        centroids,
        scores,
        1.0 / (2 * colour_sigma**2),
        1.0 / (2 * (position_sigma * spacing) ** 2),
    )
    return value.reshape(height, width).astype(np.float32)


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]: the base's logit, wherever it is
    taken (the re-learner's prior, the join)."""
    p = np.clip(p, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fuse(base_map: np.ndarray, knowledge_map: np.ndarray | None, fusion: tuple[float, float, float]) -> np.ndarray:
    """The map the re-learner corrects: sigmoid(a logit(base) + b logit(knowledge) + c), the base and the backbone's
    own saliency map (None: none, b is then 0) weighed by ``fusion`` = (a, b, c), learned on the training images."""
    a, b, c = fusion
    fused = a * logit(base_map) + c
    if knowledge_map is not None:
        fused = fused + b * logit(knowledge_map)
    return _sigmoid(fused).astype(np.float32)


def join_with_base(
    image: np.ndarray,
    base_map: np.ndarray,
    superpixels: Superpixels,
    relearned: np.ndarray,
    changeable: np.ndarray | None = None,
    colour_sigma: float = COLOUR_SIGMA,
    position_sigma: float = POSITION_SIGMA,
) -> np.ndarray:
    """The final map (H, W) float32: ``base_map`` with the re-learned correction, on the pixels ``changeable`` allows
    (bool (H, W); None: every pixel), the base exactly elsewhere.

    :param relearned: (S,) re-learned saliency probability of each superpixel; NaN where there is none (for
        example no usable neighbour): those superpixels add no correction.
    """
    if base_map.shape != superpixels.labels.shape or (changeable is not None and changeable.shape != base_map.shape):
        raise RelearnError(
            f"shapes differ: base map {base_map.shape}, superpixels {superpixels.labels.shape}, "
            f"changeable pixels {None if changeable is None else changeable.shape}"
        )
    relearned = np.asarray(relearned, dtype=np.float64)
    # against the logit of the mean, the re-learner's own prior (joint.py): the mean of the logits differs from it on
    # a soft, mixed superpixel, and that bias alone moved Amulet's maps (SOD 5-fold: max F 0.8034 against 0.8066)
    correction = logit(relearned) - logit(superpixel_means(base_map, superpixels))
    correction[~np.isfinite(relearned)] = np.nan
    spread = spatial_weighting(image, superpixels, correction, colour_sigma, position_sigma)
    spread = np.nan_to_num(spread, nan=0.0)
    base_logit = logit(base_map)
    # the change the correction makes to the clipped logit, added to the exact base value: no correction, no change
    corrected = np.clip(base_map + _sigmoid(base_logit + spread) - _sigmoid(base_logit), 0.0, 1.0)
    return (corrected if changeable is None else np.where(changeable, corrected, base_map)).astype(np.float32)
