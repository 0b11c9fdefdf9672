"""Saliency-map metrics: the paper's dataset-level PR/ROC curves and the field's image-level scores.

Two definitions of the maximum F-measure are in use, and both are here:

* dataset-level (the paper, Borji's benchmark, sal_eval_toolbox): each map is divided by its maximum, the mask
  is ``gt > 0.5``, and at each of 256 thresholds ``t = k / 255`` the map is binarised with ``>= t``; precision and
  recall are averaged over the images, F is taken from the averages (beta^2 = 0.3), then max / mean over thresholds.
  AUC is the area under the mean ROC curve over the same thresholds (:class:`DatasetPR`).
* image-level (PySODMetrics / PySODEvalToolkit): each map is min-max normalised, an F curve is computed per image,
  the curves are averaged, then max / mean (:class:`ImageFmeasure`).

MAE, S-measure, E-measure and weighted F follow PySODMetrics 1.6.2 (which ports the authors' MATLAB code), so their
values agree with it. Every metric class has the PySODMetrics shape: ``step(pred, gt)`` validates and accumulates one
image, ``results()`` reduces. The work shared by several metrics (normalisation, per-threshold pixel counts) is done
once per image by :class:`ImagePair`; :class:`SaliencyMetrics` runs all metrics over one shared pair.

Curves are indexed by threshold in ascending order: entry ``k`` is the value for the binary map ``map >= k / 255``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

BETA2 = 0.3
"""F-measure weight beta^2 of Achanta et al. (the paper's Eq. 9), weighing precision above recall."""

LEVELS = 256
THRESHOLDS = np.arange(LEVELS) / 255.0
"""The 256 binarisation thresholds ``k / 255`` (ascending), as MATLAB's ``(0:255)/255``."""

EPS = np.spacing(1.0)
"""MATLAB's ``eps``, which the reference implementations add to denominators."""


def as_map(pred: np.ndarray) -> np.ndarray:
    """A saliency map as float64 in [0, 1]: uint8 divided by 255, uint16 by 65535, floats already in [0, 1]."""
    pred = np.asarray(pred)
    if pred.ndim != 2 or not pred.size:
        raise ValueError(f"a saliency map must be 2-D and not empty, got shape {pred.shape}")
    if pred.dtype == np.uint8:
        return pred / 255.0
    if pred.dtype == np.uint16:
        return pred / 65535.0
    if pred.dtype == bool:
        return pred.astype(np.float64)
    pred = pred.astype(np.float64, copy=False)
    if not np.isfinite(pred).all():
        raise ValueError("the saliency map has NaN or infinite values")
    if pred.size and (pred.min() < 0.0 or pred.max() > 1.0):
        raise ValueError(f"a float saliency map must lie in [0, 1], got [{pred.min():g}, {pred.max():g}]")
    return pred


def as_mask(gt: np.ndarray) -> np.ndarray:
    """A ground-truth mask as bool: bool as is, integers above half their type's range, floats above 0.5."""
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {gt.shape}")
    if gt.dtype == bool:
        return gt
    if np.issubdtype(gt.dtype, np.integer):
        return gt > np.iinfo(gt.dtype).max / 2
    return gt > 0.5


def _at_or_above(histogram: np.ndarray) -> np.ndarray:
    """Per-level counts -> number of pixels at or above each level (a reversed cumulative sum)."""
    return np.cumsum(histogram[::-1])[::-1]


def _f_measure(precision, recall, beta2: float):
    """F from precision and recall, 0 where both are 0 (as the references do)."""
    numerator = (1 + beta2) * precision * recall
    denominator = beta2 * precision + recall
    return numerator / np.where(numerator == 0, 1, denominator)


def _adaptive_counts(pair: ImagePair, values: np.ndarray) -> tuple[float, float]:
    """(true positives, false positives) of the map binarised at twice its mean value (Achanta et al.), capped at 1."""
    threshold = min(2.0 * pair.pixel_sum(values) / pair.size, 1.0)
    return pair.counts_at_or_above(values, threshold)


def _adaptive_f(pair: ImagePair, values: np.ndarray, beta2: float) -> float:
    """F of the map binarised at the adaptive threshold; 0 when it hits no foreground pixel."""
    hits, false_hits = _adaptive_counts(pair, values)
    if hits == 0:
        return 0.0
    return float(_f_measure(hits / (hits + false_hits), hits / pair.n_fg, beta2))


def _enhanced_alignment(tp, fp, n_fg: int, size: int):
    """E-measure (Fan et al. 2018) of binary maps given by their true- and false-positive counts (scalars or arrays)."""
    tp = np.asarray(tp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    predicted = tp + fp
    if n_fg == 0:
        total = size - predicted
    elif n_fg == size:
        total = predicted
    else:
        fn = n_fg - tp
        tn = size - predicted - fn
        mean_pred = predicted / size
        mean_gt = n_fg / size
        total = 0.0
        # The four regions (pred fg/bg x gt fg/bg), each with its demeaned pred and gt values.
        for count, pred_value, gt_value in (
            (tp, 1 - mean_pred, 1 - mean_gt),
            (fp, 1 - mean_pred, -mean_gt),
            (fn, -mean_pred, 1 - mean_gt),
            (tn, -mean_pred, -mean_gt),
        ):
            alignment = 2 * pred_value * gt_value / (pred_value**2 + gt_value**2 + EPS)
            total = total + (alignment + 1) ** 2 / 4 * count
    return total / (size - 1 + EPS)


def _gaussian_kernel_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """The 1-D factor of MATLAB's ``fspecial('gaussian', size, sigma)``, which is separable."""
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    return kernel / kernel.sum()


_WFM_KERNEL = _gaussian_kernel_1d()
_WFM_REACH = len(_WFM_KERNEL) // 2


class ImagePair:
    """One saliency map and its mask, with what several metrics share computed once, on first use.

    ``pred``: 2-D saliency map (uint8, uint16, or float in [0, 1]); ``gt``: 2-D mask (bool, or numbers thresholded
    at half their range). Raises ValueError when the shapes differ.

    Most metrics only need, for each distinct map value, how many foreground and background pixels carry it. An 8-bit
    map (uint8, or floats that are exactly ``k / 255``, as PNG maps read by :func:`relearn_core.imageio.read_map` are)
    has at most 256 distinct values, so those metrics run on a 256-entry table instead of on every pixel; any other
    map uses one table entry per pixel. Both give the same numbers.
    """

    def __init__(self, pred: np.ndarray, gt: np.ndarray):
        self.pred = as_map(pred)
        levels = _eight_bit_levels(pred)
        self.gt = as_mask(gt)
        if self.pred.shape != self.gt.shape:
            raise ValueError(f"map shape {self.pred.shape} differs from mask shape {self.gt.shape}")
        self.size = self.gt.size
        self.n_fg = int(np.count_nonzero(self.gt))
        if levels is not None:
            # Values k / 255 for k = 0..255, with the number of foreground and background pixels at each.
            self._values = np.arange(LEVELS) / 255.0
            everywhere = np.bincount(levels.ravel(), minlength=LEVELS).astype(np.float64)
            self._fg_count = np.bincount(levels[self.gt], minlength=LEVELS).astype(np.float64)
            self._bg_count = everywhere - self._fg_count
            present = np.flatnonzero(everywhere)
            self.pred_min, self.pred_max = float(self._values[present[0]]), float(self._values[present[-1]])
        else:
            self._values = self.pred.ravel()
            self._fg_count = self.gt.ravel().astype(np.float64)
            self._bg_count = 1.0 - self._fg_count
            self.pred_min, self.pred_max = float(self.pred.min()), float(self.pred.max())

    @property
    def is_constant(self) -> bool:
        return self.pred_min == self.pred_max

    def _min_max(self, values: np.ndarray) -> np.ndarray:
        if self.is_constant:
            return values
        return (values - self.pred_min) / (self.pred_max - self.pred_min)

    @cached_property
    def normalised(self) -> np.ndarray:
        """Min-max normalised map (MATLAB ``mapminmax``, as PySODMetrics); a constant map is left as it is."""
        return self._min_max(self.pred)

    @cached_property
    def normalised_values(self) -> np.ndarray:
        """The table's values, min-max normalised (the same arithmetic as :attr:`normalised`)."""
        return self._min_max(self._values)

    @cached_property
    def scaled_values(self) -> np.ndarray:
        """The table's values divided by the map's maximum (sal_eval_toolbox); an all-zero map stays zero."""
        if self.pred_max == 0:
            return self._values
        if self.pred_min == 0:
            return self.normalised_values  # the same arithmetic: (value - 0) / (max - 0)
        return self._values / self.pred_max

    def pixel_sum(self, values: np.ndarray, where: str = "all") -> float:
        """Sum over the pixels (``where``: "all", "fg" or "bg") of a per-table-entry quantity."""
        counts = {"fg": self._fg_count, "bg": self._bg_count}.get(where)
        if counts is None:
            return float((values * self._fg_count).sum() + (values * self._bg_count).sum())
        return float((values * counts).sum())

    def counts_at_or_above(self, values: np.ndarray, threshold: float) -> tuple[float, float]:
        """(true positives, false positives) of the binary map ``value >= threshold``."""
        selected = values >= threshold
        return float(self._fg_count[selected].sum()), float(self._bg_count[selected].sum())

    def _level_counts(self, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(true positives, false positives) of ``level >= k`` for k = 0..255, from each entry's level."""
        fg = np.bincount(level, weights=self._fg_count, minlength=LEVELS)
        bg = np.bincount(level, weights=self._bg_count, minlength=LEVELS)
        return _at_or_above(fg), _at_or_above(bg)

    @cached_property
    def quantised_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts of ``normalised >= k / 255`` binned as PySODMetrics does (values truncated to 0..255)."""
        return self._level_counts((self.normalised_values * 255).astype(np.uint8))

    @cached_property
    def threshold_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts of ``scaled >= k / 255``, each value binned as MATLAB's ``histc`` at the edges (0:255)/255."""
        scaled = self.scaled_values
        # floor(x * 255) is the level up to rounding; comparing with the exact thresholds settles the edge cases.
        level = np.clip(np.floor(scaled * 255), 0, LEVELS - 1).astype(np.intp)
        level -= THRESHOLDS[level] > scaled
        above = np.minimum(level + 1, LEVELS - 1)
        level += (level < LEVELS - 1) & (THRESHOLDS[above] <= scaled)
        return self._level_counts(level)


def _eight_bit_levels(pred: np.ndarray) -> np.ndarray | None:
    """The map as uint8 levels when it is 8-bit (uint8, or float64 exactly ``k / 255``), else None."""
    pred = np.asarray(pred)
    if pred.dtype == np.uint8:
        return pred
    if pred.dtype != np.float64:
        return None
    levels = np.rint(pred * 255.0)
    if not ((levels / 255.0) == pred).all():
        return None
    return levels.astype(np.uint8)


@dataclass(frozen=True)
class Score:
    """One number a metric reports: its key (in ``relearn eval --json``, table configs), its label (table columns),
    what it means, and which way is better."""

    key: str
    label: str
    definition: str
    lower_is_better: bool = False


class _Metric:
    """Per-image records accumulated by ``step``; ``measure`` is pure, so pairs can be measured in parallel.

    A metric declares its ``TITLE`` (its heading in ``relearn eval``'s summary) and its ``SCORES``; adding a metric is
    one class here, listed in :data:`METRICS`."""

    TITLE = ""
    SCORES: tuple[Score, ...] = ()

    def __init__(self):
        self._records: list[dict] = []

    def measure(self, pair: ImagePair) -> dict:
        raise NotImplementedError

    def add(self, record: dict) -> None:
        self._records.append(record)

    def step(self, pred: np.ndarray, gt: np.ndarray) -> dict:
        """Measure one map against its mask and accumulate it; returns the image's own record."""
        record = self.measure(ImagePair(pred, gt))
        self.add(record)
        return record

    def __len__(self) -> int:
        return len(self._records)

    def _stack(self, key: str) -> np.ndarray:
        if not self._records:
            raise ValueError(f"{type(self).__name__}: no image was measured")
        return np.array([record[key] for record in self._records], dtype=np.float64)

    def per_image(self) -> dict[str, np.ndarray]:
        """Each scalar in the records, one value per image in step order."""
        if not self._records:
            return {}
        keys = [key for key, value in self._records[0].items() if np.ndim(value) == 0]
        return {key: self._stack(key) for key in keys}


class DatasetPR(_Metric):
    """The paper's PR and ROC curves (sal_eval_toolbox): per-image curves averaged over the dataset.

    results(): ``max_f``, ``mean_f`` (max / mean over thresholds of F from the mean precision and mean recall),
    ``adp_f`` (F at twice the mean of the max-divided map, per image, averaged), ``auc`` (trapezoid area under the
    mean ROC curve, closed at (0, 0) and (1, 1)), and the curves ``precision``, ``recall``, ``f_curve``, ``tpr``,
    ``fpr`` over :data:`THRESHOLDS`.
    """

    TITLE = (
        "F-measure, dataset-level (the paper's; sal_eval_toolbox): mean precision and recall over images at 256 "
        "thresholds, then F (beta^2 = 0.3)"
    )
    SCORES = (
        Score(
            "max_f",
            "max F",
            "dataset-level (the paper, sal_eval_toolbox): maps divided by their maximum, precision "
            "and recall averaged over images at 256 thresholds (>= k/255), F with beta^2=0.3 from the averages, "
            "maximum over thresholds",
        ),
        Score("mean_f", "mean F", "dataset-level F curve as for max_f, mean over the 256 thresholds"),
        Score(
            "adp_f",
            "adp F",
            "per image F at threshold 2 x mean of the max-divided map (capped at 1), averaged over images",
        ),
        Score(
            "auc",
            "AUC",
            "trapezoid area under the dataset-level mean ROC curve (256 thresholds, closed at (0,0) and (1,1))",
        ),
    )

    def __init__(self, beta2: float = BETA2):
        super().__init__()
        self.beta2 = beta2

    def measure(self, pair: ImagePair) -> dict:
        tp, fp = pair.threshold_counts
        predicted = tp + fp
        n_bg = pair.size - pair.n_fg
        return {
            "precision": tp / np.where(predicted == 0, 1, predicted),
            "recall": tp / pair.n_fg if pair.n_fg else np.zeros(LEVELS),
            "fpr": fp / n_bg if n_bg else np.zeros(LEVELS),
            "adp_f": _adaptive_f(pair, pair.scaled_values, self.beta2),
        }

    def results(self) -> dict:
        precision = self._stack("precision").mean(axis=0)
        recall = self._stack("recall").mean(axis=0)
        fpr = self._stack("fpr").mean(axis=0)
        f_curve = _f_measure(precision, recall, self.beta2)
        # Thresholds descend from 1 to 0 along the ROC curve, so FPR rises; (0, 0) and (1, 1) close it.
        roc_x = np.concatenate(([0.0], fpr[::-1], [1.0]))
        roc_y = np.concatenate(([0.0], recall[::-1], [1.0]))
        return {
            "max_f": float(f_curve.max()),
            "mean_f": float(f_curve.mean()),
            "adp_f": float(self._stack("adp_f").mean()),
            "auc": float(np.trapezoid(roc_y, roc_x)),
            "thresholds": THRESHOLDS.copy(),
            "precision": precision,
            "recall": recall,
            "f_curve": f_curve,
            "tpr": recall.copy(),
            "fpr": fpr,
        }

    def resampled(self, samples: np.ndarray) -> np.ndarray:
        """max F (B,) of each resample of the measured images: ``samples`` (B, N) holds indices into them in step
        order, repeats allowed (a bootstrap)."""
        precision = self._stack("precision")[samples].mean(axis=1)
        recall = self._stack("recall")[samples].mean(axis=1)
        return _f_measure(precision, recall, self.beta2).max(axis=1)


class ImageFmeasure(_Metric):
    """F-measure the PySODMetrics way: min-max normalised maps, an F curve per image, averaged over images.

    results(): ``max_f_image``, ``mean_f_image`` (max / mean of the mean curve), ``adp_f_image`` (adaptive threshold
    on the normalised map), and the curves ``f_curve_image``, ``precision_image``, ``recall_image``.
    Per image: ``max_f_image`` (the image's own curve maximum) and ``adp_f_image``.
    """

    TITLE = "F-measure, image-level (PySODMetrics): an F curve per image, averaged"
    SCORES = (
        Score(
            "max_f_image",
            "max F (img)",
            "image-level (PySODMetrics): min-max normalised maps, an F curve per image, curves averaged, maximum",
        ),
        Score("mean_f_image", "mean F (img)", "image-level F curve as for max_f_image, mean over the 256 thresholds"),
        Score(
            "adp_f_image",
            "adp F (img)",
            "per image F at threshold 2 x mean of the min-max normalised map, averaged over images",
        ),
    )

    def __init__(self, beta2: float = BETA2):
        super().__init__()
        self.beta2 = beta2

    def measure(self, pair: ImagePair) -> dict:
        tp, fp = pair.quantised_counts
        predicted = tp + fp
        precision = tp / np.where(predicted == 0, 1, predicted)
        recall = tp / max(pair.n_fg, 1)
        f_curve = _f_measure(precision, recall, self.beta2)
        return {
            "precision": precision,
            "recall": recall,
            "f_curve": f_curve,
            "max_f_image": float(f_curve.max()),
            "adp_f_image": _adaptive_f(pair, pair.normalised_values, self.beta2),
        }

    def results(self) -> dict:
        f_curve = self._stack("f_curve").mean(axis=0)
        return {
            "max_f_image": float(f_curve.max()),
            "mean_f_image": float(f_curve.mean()),
            "adp_f_image": float(self._stack("adp_f_image").mean()),
            "f_curve_image": f_curve,
            "precision_image": self._stack("precision").mean(axis=0),
            "recall_image": self._stack("recall").mean(axis=0),
        }


class MAE(_Metric):
    """Mean absolute error between the min-max normalised map and the binary mask (the paper's Eq. 10)."""

    TITLE = "MAE"
    SCORES = (
        Score(
            "mae",
            "MAE",
            "mean absolute error of the min-max normalised map, averaged over images",
            lower_is_better=True,
        ),
    )

    def measure(self, pair: ImagePair) -> dict:
        values = pair.normalised_values
        return {"mae": (pair.pixel_sum(1.0 - values, "fg") + pair.pixel_sum(values, "bg")) / pair.size}

    def results(self) -> dict:
        return {"mae": float(self._stack("mae").mean())}

    def resampled(self, samples: np.ndarray) -> np.ndarray:
        """MAE (B,) of each resample (B, N) of the measured images' indices, as ``DatasetPR.resampled``."""
        return self._stack("mae")[samples].mean(axis=1)


class Smeasure(_Metric):
    """Structure measure (Fan et al., ICCV 2017): object- and region-aware structural similarity, weight ``alpha``."""

    TITLE = "S-measure"
    SCORES = (Score("s_measure", "S", "structure measure (Fan et al. 2017), alpha=0.5"),)

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.alpha = alpha

    def measure(self, pair: ImagePair) -> dict:
        fg_fraction = pair.n_fg / pair.size
        if fg_fraction == 0:
            score = 1.0 - pair.pixel_sum(pair.normalised_values) / pair.size
        elif fg_fraction == 1:
            score = pair.pixel_sum(pair.normalised_values) / pair.size
        else:
            region = self._region(pair.normalised, pair.gt, pair.n_fg)
            score = max(0.0, self.alpha * self._object(pair) + (1 - self.alpha) * region)
        return {"s_measure": float(score)}

    @staticmethod
    def _object_similarity(total: float, squares: float, count: int) -> float:
        mean = total / count
        std = np.sqrt(max(squares - count * mean * mean, 0.0) / (count - 1)) if count > 1 else 0.0
        return 2 * mean / (mean * mean + 1 + std + EPS)

    def _object(self, pair: ImagePair) -> float:
        values = pair.normalised_values
        inverse = 1.0 - values  # the background term is the similarity of (1 - pred) over the background
        n_fg, n_bg = pair.n_fg, pair.size - pair.n_fg
        fg_total, fg_squares = pair.pixel_sum(values, "fg"), pair.pixel_sum(values * values, "fg")
        bg_total, bg_squares = pair.pixel_sum(inverse, "bg"), pair.pixel_sum(inverse * inverse, "bg")
        fg_fraction = n_fg / pair.size
        return self._object_similarity(fg_total, fg_squares, n_fg) * fg_fraction + self._object_similarity(
            bg_total, bg_squares, n_bg
        ) * (1 - fg_fraction)

    @staticmethod
    def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
        count = pred.size
        x = pred.mean()
        y = gt.mean()
        dx = pred - x
        dy = gt - y
        # Element-wise products and sums rather than BLAS dot products: OpenBLAS threads stall on a busy machine.
        sigma_x = (dx * dx).sum() / (count - 1 + EPS)
        sigma_y = (dy * dy).sum() / (count - 1 + EPS)
        sigma_xy = (dx * dy).sum() / (count - 1 + EPS)
        alpha = 4 * x * y * sigma_xy
        beta = (x * x + y * y) * (sigma_x + sigma_y)
        if alpha != 0:
            return alpha / (beta + EPS)
        return 1.0 if beta == 0 else 0.0

    def _region(self, pred: np.ndarray, gt: np.ndarray, n_fg: int) -> float:
        height, width = gt.shape
        # Split at the foreground centroid, rounded half to even and shifted by one as the MATLAB original does.
        row = int(np.round((gt.sum(axis=1) * np.arange(height)).sum() / n_fg)) + 1
        col = int(np.round((gt.sum(axis=0) * np.arange(width)).sum() / n_fg)) + 1
        gt = gt.astype(np.float64)
        area = height * width
        score = 0.0
        for rows, cols in (
            (slice(0, row), slice(0, col)),
            (slice(0, row), slice(col, width)),
            (slice(row, height), slice(0, col)),
            (slice(row, height), slice(col, width)),
        ):
            block = pred[rows, cols]
            if block.size:
                score += self._ssim(block, gt[rows, cols]) * (block.size / area)
        return score

    def results(self) -> dict:
        return {"s_measure": float(self._stack("s_measure").mean())}


class Emeasure(_Metric):
    """Enhanced-alignment measure (Fan et al., IJCAI 2018) on the normalised map, at 256 thresholds and adaptive.

    results(): ``max_e``, ``mean_e`` (of the mean curve), ``adp_e`` (threshold twice the map's mean), ``e_curve``.
    """

    TITLE = "E-measure"
    SCORES = (
        Score("max_e", "max E", "enhanced-alignment measure (Fan et al. 2018), curve averaged over images, maximum"),
        Score("mean_e", "mean E", "E-measure curve averaged over images, mean over thresholds"),
        Score("adp_e", "adp E", "E-measure at threshold 2 x mean, averaged over images"),
    )

    def measure(self, pair: ImagePair) -> dict:
        tp, fp = pair.quantised_counts
        curve = _enhanced_alignment(tp, fp, pair.n_fg, pair.size)
        adaptive_tp, adaptive_fp = _adaptive_counts(pair, pair.normalised_values)
        return {
            "e_curve": curve,
            "max_e": float(curve.max()),
            "adp_e": float(_enhanced_alignment(adaptive_tp, adaptive_fp, pair.n_fg, pair.size)),
        }

    def results(self) -> dict:
        curve = self._stack("e_curve").mean(axis=0)
        return {
            "max_e": float(curve.max()),
            "mean_e": float(curve.mean()),
            "adp_e": float(self._stack("adp_e").mean()),
            "e_curve": curve,
        }


class WeightedFmeasure(_Metric):
    """Weighted F-measure (Margolin et al., CVPR 2014), ``beta2`` = 1 as in the original code; 0 for an empty mask."""

    TITLE = "weighted F"
    SCORES = (Score("weighted_f", "wF", "weighted F-measure (Margolin et al. 2014), beta^2=1"),)

    def __init__(self, beta2: float = 1.0):
        super().__init__()
        self.beta2 = beta2

    def measure(self, pair: ImagePair) -> dict:
        return {"weighted_f": self._weighted_f(pair) if pair.n_fg else 0.0}

    def _weighted_f(self, pair: ImagePair) -> float:
        pred, gt = pair.normalised, pair.gt
        error = np.abs(pred - gt)
        # Pixel dependency: the error is smoothed only where it is read back, at foreground pixels; their 7x7 windows
        # lie in the foreground's bounding box grown by the kernel's reach, so the nearest-foreground lookup for the
        # background (which the smoothing reads) runs on that crop only. All foreground lies inside it, so the nearest
        # foreground pixel found there is the one found on the whole image.
        rows = np.flatnonzero(gt.any(axis=1))
        cols = np.flatnonzero(gt.any(axis=0))
        top, bottom = max(rows[0] - _WFM_REACH, 0), min(rows[-1] + _WFM_REACH + 1, gt.shape[0])
        left, right = max(cols[0] - _WFM_REACH, 0), min(cols[-1] + _WFM_REACH + 1, gt.shape[1])
        gt_crop = gt[top:bottom, left:right]
        error_crop = error[top:bottom, left:right]
        nearest = distance_transform_edt(~gt_crop, return_distances=False, return_indices=True)
        error_at_nearest = error_crop[nearest[0], nearest[1]]
        smoothed = cv2.sepFilter2D(
            error_at_nearest, cv2.CV_64F, _WFM_KERNEL, _WFM_KERNEL, borderType=cv2.BORDER_CONSTANT
        )
        fg_error = float(np.where(gt_crop, np.minimum(error_crop, smoothed), 0.0).sum())
        # Pixel importance: background errors weigh more the further they are from the object. The weight is 1 on the
        # foreground (distance 0), so weighting the whole error map and taking away the foreground's own (unsmoothed)
        # error, 1 - pred, leaves the background term.
        distance = cv2.distanceTransform((~gt).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        weight = 2.0 - np.exp(distance * np.float32(np.log(0.5) / 5.0))
        fg_raw_error = pair.n_fg - pair.pixel_sum(pair.normalised_values, "fg")
        false_positive = float((error * weight).sum()) - fg_raw_error
        true_positive = pair.n_fg - fg_error
        recall = 1.0 - fg_error / pair.n_fg
        precision = true_positive / (true_positive + false_positive + EPS)
        return (1 + self.beta2) * recall * precision / (recall + self.beta2 * precision + EPS)

    def results(self) -> dict:
        return {"weighted_f": float(self._stack("weighted_f").mean())}


METRICS: tuple[type[_Metric], ...] = (DatasetPR, ImageFmeasure, MAE, Smeasure, Emeasure, WeightedFmeasure)
"""Every metric :class:`SaliencyMetrics` runs, in the order ``relearn eval`` reports them."""
SCORES: dict[str, Score] = {score.key: score for metric in METRICS for score in metric.SCORES}
"""Every score by key, in report order."""


def _curve_free(record: dict) -> dict:
    return {key: value for key, value in record.items() if np.ndim(value) == 0}


class SaliencyMetrics:
    """All the metrics over one shared :class:`ImagePair` per image (what ``relearn eval`` reports).

    results(): every score of :data:`SCORES` and the curves; :meth:`scores`: the scores alone.
    """

    def __init__(self):
        self.parts: dict[str, _Metric] = {metric.__name__: metric() for metric in METRICS}

    def measure(self, pair: ImagePair) -> dict[str, dict]:
        """Every metric's record for one pair (pure: safe to call from several threads)."""
        return {name: metric.measure(pair) for name, metric in self.parts.items()}

    def add(self, records: dict[str, dict]) -> None:
        for name, metric in self.parts.items():
            metric.add(records[name])

    def step(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        """Measure and accumulate one image; returns its own scalar scores."""
        records = self.measure(ImagePair(pred, gt))
        self.add(records)
        return image_scores(records)

    def __len__(self) -> int:
        return len(next(iter(self.parts.values())))

    def results(self) -> dict:
        merged: dict = {}
        for metric in self.parts.values():
            merged.update(metric.results())
        return merged

    def scores(self) -> dict[str, float]:
        """The scalar results only."""
        return _curve_free(self.results())


def image_scores(records: dict[str, dict]) -> dict[str, float]:
    """The per-image scalars of one :meth:`SaliencyMetrics.measure` result, flattened into one dict."""
    flat: dict[str, float] = {}
    for record in records.values():
        flat.update(_curve_free(record))
    return flat
