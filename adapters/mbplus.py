"""MB+: Minimum Barrier Salient Object Detection (Zhang, Sclaroff, Lin, Shen, Price, Mech, ICCV 2015), written from
the paper.

1. The image is downsized (longest side 300 px), converted to Lab and median-filtered per channel.
2. FastMBD: the minimum barrier distance of every pixel to the image boundary (the seeds), approximated by
   alternating raster and inverse-raster scans, per Lab channel, summed. Background is connected to the border
   through paths of little colour variation, so a high distance means salient.
3. MB+ adds the appearance-based backgroundness cue: the four border strips' colour statistics (mean, covariance),
   the whitened (Mahalanobis-like, L1) colour distance of each pixel to each strip, and their sum minus the largest,
   so that one border strip touched by the object does not dominate.
4. Post-processing: morphological smoothing (opening then closing by reconstruction, kernel width from the map's mean),
   centre bias, and contrast enhancement by a sigmoid centred at Otsu's threshold.

Parameter defaults are the paper's values (alpha = 50, b = 10, three scans, 300 px, border strips of 10 %); the 5x5
median filter, the covariance regularisation and the smallest smoothing width are those of the authors' release.
The authors' detection and removal of artificial image frames is not done here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from relearn_core.errors import RelearnError
from relearn_core.hookspecs import AdapterInfo, hookimpl

NAME = "mbplus"


@dataclass(frozen=True)
class MBPlusParams:
    """MB+ parameters; defaults from the paper."""

    max_dim: int = 300  #: longest side of the image the saliency is computed on
    median_size: int = 5  #: median filter applied to each Lab channel before the distance transform
    mbd_passes: int = 3  #: raster, inverse-raster, raster: the paper finds three scans enough
    backgroundness: bool = True  #: MB+ (True) or MB (False)
    border_ratio: float = 0.1  #: width of each border strip, as a fraction of the image's height or width
    covariance_reg: float = 50.0  #: added to the strips' colour covariance diagonal (for values up to 255)
    smooth_alpha: float = 50.0  #: smoothing kernel width = smooth_alpha * sqrt(mean of the map)
    min_smooth_width: int = 3
    centre_bias: bool = True
    contrast_b: float = 10.0  #: slope of the contrast-enhancing sigmoid


def fast_mbd(features: np.ndarray, passes: int = 3) -> np.ndarray:
    """Approximate minimum barrier distance to the image border, per channel of ``features`` (H, W, C), summed.

    Each pixel keeps the highest and lowest value on its current best path from the border; a scan lets it take a
    neighbour's path when that gives a smaller barrier (highest minus lowest value).
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.ndim == 2:
        features = features[..., None]
    distance = np.zeros(features.shape, np.float32)
    distance[1:-1, 1:-1] = np.inf
    lower, upper = features.copy(), features.copy()
    from .mbplus_scan import mbd_scan  # numba compiles on first use: relearn starts without it

    for scan in range(passes):
        mbd_scan(features, distance, lower, upper, scan % 2 == 0)
    distance[~np.isfinite(distance)] = 0.0  # images under 3 pixels across have no interior
    return distance.sum(axis=2)


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max stretch to [0, 1] (all zeros for a constant map)."""
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low)).astype(np.float32) if high > low else np.zeros(values.shape, np.float32)


def backgroundness(colours: np.ndarray, border_ratio: float = 0.1, covariance_reg: float = 50.0) -> np.ndarray:
    """The image-boundary-contrast map of MB+: whitened colour distance to the four border strips, in [0, 1].

    For each strip (top, bottom, left, right) the colours are whitened with the strip's regularised covariance and
    the L1 distance to the strip's mean is taken; each distance map is normalised, and the maps are summed less
    their maximum (one strip may be covered by the object).
    """
    height, width, channels = colours.shape
    colours = colours.astype(np.float32)
    rows, columns = max(1, round(border_ratio * height)), max(1, round(border_ratio * width))
    strips = (colours[:rows], colours[height - rows :], colours[:, :columns], colours[:, width - columns :])
    distances = np.empty((len(strips), height, width), np.float32)
    for index, strip in enumerate(strips):
        samples = strip.reshape(-1, channels).astype(np.float64)
        spread = np.cov(samples, rowvar=False) if len(samples) > 1 else np.zeros((channels, channels))
        covariance = np.atleast_2d(spread) + covariance_reg * np.eye(channels)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        whitening = (eigenvectors / np.sqrt(eigenvalues)).T.astype(np.float32)  # rows: whitened axes
        centred = colours - samples.mean(axis=0).astype(np.float32)
        distances[index] = normalise(np.abs(cv2.transform(centred, whitening)).sum(axis=2))
    return normalise(distances.sum(axis=0) - distances.max(axis=0))


def morphological_smoothing(saliency: np.ndarray, width: int) -> np.ndarray:
    """Opening by reconstruction followed by closing by reconstruction with a ``width`` x ``width`` square:
    removes bright and dark details smaller than the kernel while keeping the edges of what remains."""
    from skimage.morphology import reconstruction  # loaded when MB+ runs, not when relearn starts

    kernel = np.ones((width, width), np.uint8)
    saliency = saliency.astype(np.float32)
    opened = reconstruction(cv2.erode(saliency, kernel), saliency, method="dilation").astype(np.float32)
    return reconstruction(cv2.dilate(opened, kernel), opened, method="erosion").astype(np.float32)


def centre_prior(height: int, width: int) -> np.ndarray:
    """1 at the image centre falling linearly to 0 at the corners (distance measured in half-image units)."""
    rows = (np.arange(height, dtype=np.float32) + 0.5) / (height / 2.0) - 1.0
    columns = (np.arange(width, dtype=np.float32) + 0.5) / (width / 2.0) - 1.0
    distance = np.sqrt(rows[:, None] ** 2 + columns[None, :] ** 2) / np.sqrt(2.0)
    return np.clip(1.0 - distance, 0.0, 1.0).astype(np.float32)


def enhance_contrast(saliency: np.ndarray, slope: float = 10.0) -> np.ndarray:
    """Sigmoid centred at the map's Otsu threshold: pushes the object towards 1 and the background towards 0."""
    if float(saliency.max()) <= float(saliency.min()):
        return np.zeros(saliency.shape, np.float32)
    from skimage.filters import threshold_otsu

    threshold = threshold_otsu(saliency)
    return (1.0 / (1.0 + np.exp(-slope * (saliency - threshold)))).astype(np.float32)


def mbplus_saliency(image: np.ndarray, params: MBPlusParams = MBPlusParams()) -> np.ndarray:
    """The MB+ (or, without backgroundness, MB) saliency map of an RGB uint8 image: float32 (H, W) in [0, 1]."""
    height, width = image.shape[:2]
    scale = min(1.0, params.max_dim / max(height, width))
    small_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image
    lab = cv2.cvtColor(np.ascontiguousarray(small, dtype=np.uint8), cv2.COLOR_RGB2LAB)
    if params.median_size > 1:
        lab = cv2.medianBlur(lab, params.median_size)
    saliency = normalise(fast_mbd(lab, params.mbd_passes))
    if params.backgroundness:
        saliency = normalise(saliency + backgroundness(lab, params.border_ratio, params.covariance_reg))
    smooth_width = max(params.min_smooth_width, int(params.smooth_alpha * np.sqrt(float(saliency.mean()))))
    saliency = morphological_smoothing(saliency, smooth_width)
    if params.centre_bias:
        saliency = saliency * centre_prior(*saliency.shape)
    saliency = enhance_contrast(normalise(saliency), params.contrast_b)
    saliency = cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)
    return normalise(saliency)


def params_from_options(options: Mapping[str, Any]) -> MBPlusParams:
    """MB+ parameters overridden by the options that name one (values may be command-line strings)."""
    changes = {}
    for field in dataclasses.fields(MBPlusParams):
        if field.name not in options:
            continue
        value = options[field.name]
        kind = type(field.default)
        try:
            if kind is bool and isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                value = value.strip().lower() in ("true", "1", "yes")
            changes[field.name] = kind(value)
        except (TypeError, ValueError):
            raise RelearnError(f"mbplus option {field.name}={value!r}: expected {kind.__name__}") from None
    return dataclasses.replace(MBPlusParams(), **changes)


@hookimpl
def relearn_adapters() -> list[AdapterInfo]:
    return [
        AdapterInfo(
            name=NAME,
            description="MB+ minimum barrier salient object detection (FastMBD + backgroundness), no learning",
            paper="Minimum Barrier Salient Object Detection at 80 FPS (Zhang, Sclaroff, Lin, Shen, Price, Mech)",
            venue="ICCV",
            year=2015,
            predicts_from="algorithm",
            options=dataclasses.asdict(MBPlusParams()),
        )
    ]


@hookimpl
def relearn_predict(adapter: str, images: Sequence[np.ndarray], names: Sequence[str], options: Mapping[str, Any]):
    params = params_from_options(options)
    return [mbplus_saliency(image, params) for image in images]
