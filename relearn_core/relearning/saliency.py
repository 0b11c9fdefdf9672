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

from dataclasses import dataclass

import cv2
import numba
import numpy as np
import scipy.sparse

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
def _spreading_weights(
    lab, labels, width, offsets, per_label, candidates, mean_colour, centroids, colour_factor, position_factor
):
    """CSR rows (indptr, indices, weights), one per pixel: its candidate superpixels' softmax numerators, shifted by
    the row's largest log-weight to keep the exponentials in range."""
    indptr = np.zeros(labels.size + 1, np.int64)
    for pixel in range(labels.size):
        indptr[pixel + 1] = indptr[pixel] + per_label[labels[pixel]]
    indices = np.empty(indptr[-1], np.int64)
    weights = np.empty(indptr[-1], np.float64)
    for pixel in range(labels.size):
        label = labels[pixel]
        y, x = divmod(pixel, width)
        start, row = offsets[label], indptr[pixel]
        top = -np.inf
        for k in range(per_label[label]):
            c = candidates[start + k]
            log_weight = _log_weight(lab[pixel], x, y, mean_colour[c], centroids[c], colour_factor, position_factor)
            indices[row + k] = c
            weights[row + k] = log_weight
            top = max(top, log_weight)
        for k in range(per_label[label]):
            weights[row + k] = np.exp(weights[row + k] - top)
    return indptr, indices, weights


@dataclass(frozen=True)
class Spreading:
    """Spatial weighting of one image's superpixels, built once and applied to any number of score vectors (the
    epochs and shrinks of training judge the same held-out images many times).

    ``weights`` (H * W, S): each pixel's unnormalised weight of its own and adjacent superpixels; a call normalises
    over the candidates that have a score.
    """

    weights: scipy.sparse.csr_matrix
    shape: tuple[int, int]

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """(H, W) float32: each pixel's weighted mean of its scored candidates' ``scores`` (S,); NaN scores take no
        part, and a pixel whose candidates all lack one gets NaN."""
        scores = np.asarray(scores, dtype=np.float64)
        count = self.weights.shape[1]
        if scores.shape != (count,):
            raise RelearnError(f"expected {count} superpixel scores, got shape {scores.shape}")
        scored = np.isfinite(scores)
        total = self.weights @ scored.astype(np.float64)
        weighted = self.weights @ np.where(scored, scores, 0.0)
        value = np.full(total.shape, np.nan)
        np.divide(weighted, total, out=value, where=total > 0)
        return value.reshape(self.shape).astype(np.float32)


def spreading(
    image: np.ndarray,
    superpixels: Superpixels,
    colour_sigma: float = COLOUR_SIGMA,
    position_sigma: float = POSITION_SIGMA,
) -> Spreading:
    """The spatial weighting of ``image`` (RGB) over its ``superpixels``: Gaussian in CIELAB colour (``colour_sigma``)
    and in position (``position_sigma`` superpixel spacings), over each pixel's own and 4-connected superpixels."""
    count = superpixels.count
    height, width = superpixels.labels.shape
    lab = _lab(image).reshape(-1, 3)
    mean_colour = np.stack([superpixel_means(lab[:, k], superpixels) for k in range(3)], 1)
    spacing = np.sqrt(height * width / count)
    pairs = _neighbour_pairs(superpixels, include_self=True)  # CSR lists by superpixel, self included
    per_label = np.bincount(pairs[:, 0], minlength=count)
    indptr, indices, weights = _spreading_weights(
        lab.astype(np.float64),
        superpixels.labels.ravel().astype(np.int64),
        width,
        np.cumsum(per_label) - per_label,
        per_label,
        pairs[:, 1].copy(),
        mean_colour,
        superpixels.centroids(),  # (S, 2) x, y
        1.0 / (2 * colour_sigma**2),
        1.0 / (2 * (position_sigma * spacing) ** 2),
    )
    return Spreading(
        scipy.sparse.csr_matrix((weights, indices, indptr), shape=(height * width, count)), (height, width)
    )


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
    return spreading(image, superpixels, colour_sigma, position_sigma)(scores)


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
    spread_by: Spreading | None = None,
) -> np.ndarray:
    """The final map (H, W) float32: ``base_map`` with the re-learned correction, on the pixels ``changeable`` allows
    (bool (H, W); None: every pixel), the base exactly elsewhere.

    :param relearned: (S,) re-learned saliency probability of each superpixel; NaN where there is none (for
        example no usable neighbour): those superpixels add no correction.
    :param spread_by: the image's spatial weighting, when the caller keeps it (None: built here).
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
    spread = (spreading(image, superpixels) if spread_by is None else spread_by)(correction)
    spread = np.nan_to_num(spread, nan=0.0)
    base_logit = logit(base_map)
    # the change the correction makes to the clipped logit, added to the exact base value: no correction, no change
    corrected = np.clip(base_map + _sigmoid(base_logit + spread) - _sigmoid(base_logit), 0.0, 1.0)
    return (corrected if changeable is None else np.where(changeable, corrected, base_map)).astype(np.float32)
