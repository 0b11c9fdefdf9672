"""Evaluating a folder of saliency maps against a folder of masks: the engine behind ``relearn eval``.

Maps and masks are matched by file stem. Every problem with an input file becomes one :class:`Problem` (the file and
what is wrong with it): a pair that cannot be scored is skipped, a pair scored with a caveat (constant map, RGB or
16-bit mask, resized map) carries a warning, and files without a partner are listed. Nothing is fatal while at least
one pair can be scored; :attr:`EvalReport.count` is 0 when none could.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import InputError
from ..imageio import atomic_write_bytes, list_by_stem, read_image, read_map, read_mask
from ..outputs import refuse_overlap
from .metrics import METRICS, SCORES, ImagePair, SaliencyMetrics, image_scores

SCORE_KEYS = tuple(SCORES)
"""The dataset scores of a report, in the order they are printed and written (declared by the metrics)."""
DEFINITIONS = {key: score.definition for key, score in SCORES.items()}

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_GREY_MODES = ("1", "L")
_PROGRESS_DELAY_S = 2.0  # the bar appears only on runs that last longer than this


@dataclass(frozen=True)
class Problem:
    """One input file and what is wrong with it, printed as one line."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class EvalReport:
    """Scores of one folder of maps against one folder of masks, with every input problem met on the way."""

    pred_dir: str
    gt_dir: str
    count: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    per_image: list[dict] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    unmatched_maps: list[str] = field(default_factory=list)
    unmatched_masks: list[str] = field(default_factory=list)

    def to_json_dict(self) -> dict:
        document = {"pred": self.pred_dir, "gt": self.gt_dir, "count": self.count}
        document.update({key: self.scores.get(key) for key in SCORE_KEYS})
        document["definitions"] = DEFINITIONS
        document["skipped"] = [{"path": p.path, "problem": p.message} for p in self.skipped]
        document["warnings"] = [{"path": p.path, "problem": p.message} for p in self.warnings]
        document["unmatched_maps"] = self.unmatched_maps
        document["unmatched_masks"] = self.unmatched_masks
        return document

    def messages(self) -> list[str]:
        """Every problem as one line, naming the file."""
        lines = [f"skipped {problem}" for problem in self.skipped]
        lines += [f"warning {problem}" for problem in self.warnings]
        lines += [f"{path}: map without a mask of the same name in {self.gt_dir}" for path in self.unmatched_maps]
        lines += [f"{path}: mask without a map of the same name in {self.pred_dir}" for path in self.unmatched_masks]
        return lines


def read_mask_checked(path: str | os.PathLike) -> tuple[np.ndarray, str | None]:
    """A mask as bool and a note when it was not a plain grey/binary image.

    RGB masks whose three channels are equal are read as grey; 16-bit masks are thresholded at half of their range,
    or at 127 when no value exceeds 255 (8-bit values stored in 16 bits); floating-point masks at 0.5. Colour masks
    raise InputError.
    """
    path = Path(path)
    try:
        with Image.open(path) as probe:
            mode = probe.mode
            if mode in _SIXTEEN_BIT_MODES:
                raw = np.asarray(probe)
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot be read as an image ({type(exc).__name__})") from None
    if mode in _GREY_MODES:
        return read_mask(path), None
    if mode == "F":
        return read_mask(path), "floating-point mask: foreground where the value is above 0.5"
    if mode in _SIXTEEN_BIT_MODES:
        top = int(raw.max(initial=0))
        if top <= 255:
            return raw > 127, f"16-bit mask with values up to {top}: read on the 8-bit scale (foreground > 127)"
        return raw > 32767, "16-bit mask: foreground where the value is above 32767"
    rgb = read_image(path)
    if (rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 0] != rgb[..., 2]).any():
        raise InputError(path, f"colour mask ({mode} with differing channels): give a grey or binary mask")
    return rgb[..., 0] > 127, f"{mode} mask with equal channels: read as grey"


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _measure_pair(metrics: SaliencyMetrics, map_path: Path, mask_path: Path, resize: bool):
    """Read and score one pair: (records or None, problems that skip it, warnings)."""
    try:
        mask, mask_note = read_mask_checked(mask_path)
        saliency = read_map(map_path)
    except InputError as exc:
        return None, [Problem(exc.path, exc.problem)], []
    warnings = [Problem(str(mask_path), mask_note)] if mask_note else []
    if saliency.shape != mask.shape:
        if not resize:
            problem = (
                f"map is {_size(saliency)} but its mask {mask_path} is {_size(mask)} "
                "(pass --resize to resize maps to their masks)"
            )
            return None, [Problem(str(map_path), problem)], warnings
        warnings.append(Problem(str(map_path), f"resized from {_size(saliency)} to the mask's {_size(mask)}"))
        saliency = np.clip(cv2.resize(saliency, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR), 0, 1)
    pair = ImagePair(saliency, mask)
    if pair.is_constant:
        warnings.append(
            Problem(
                str(map_path),
                f"map is constant (every pixel {pair.pred_max:.4g}): it ranks no pixel above another, scored as it is",
            )
        )
    if pair.n_fg == 0:
        warnings.append(Problem(str(mask_path), "mask has no foreground pixel: recall and weighted F are 0 here"))
    return metrics.measure(pair), [], warnings


def _by_stem(folder, prefix: str, suffix: str) -> dict[str, Path]:
    """``list_by_stem`` with a stem prefix stripped as well (files without it are ignored)."""
    found = list_by_stem(folder, suffix=suffix)
    if not prefix:
        return found
    return {stem[len(prefix) :]: path for stem, path in found.items() if stem.startswith(prefix) and stem != prefix}


def default_workers() -> int:
    """Threads for reading and scoring: the metrics spend most time in numpy, OpenCV and SciPy code."""
    return max(1, min(4, os.cpu_count() or 1))


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    resize: bool = False,
    suffix: str = "",
    prefix: str = "",
    gt_prefix: str = "",
    gt_suffix: str = "",
    progress: bool = True,
    workers: int | None = None,
) -> EvalReport:
    """Score every map in ``pred_dir`` against the mask of the same stem in ``gt_dir``.

    ``suffix``, ``prefix``: parts of the map stems to strip before matching (maps named ``<id>_dss.png``:
    ``suffix="_dss"``); files without them are ignored. ``gt_prefix``, ``gt_suffix``: the same for the masks.
    ``resize``: resize maps to their mask's size instead of skipping them. ``progress``: a progress bar on stderr
    for runs that last more than a few seconds. Raises InputError when a folder is missing or holds no image;
    returns a report with ``count == 0`` when no pair could be scored.
    """
    maps = _by_stem(pred_dir, prefix, suffix)
    masks = _by_stem(gt_dir, gt_prefix, gt_suffix)
    if not maps:
        raise InputError(pred_dir, "no saliency maps (png, jpg, bmp) in this folder")
    if not masks:
        raise InputError(gt_dir, "no masks (png, jpg, bmp) in this folder")
    report = EvalReport(pred_dir=str(pred_dir), gt_dir=str(gt_dir))
    report.unmatched_maps = [str(maps[stem]) for stem in maps if stem not in masks]
    report.unmatched_masks = [str(masks[stem]) for stem in masks if stem not in maps]
    stems = [stem for stem in maps if stem in masks]

    metrics = SaliencyMetrics()
    with (
        ThreadPoolExecutor(max_workers=workers or default_workers()) as pool,
        tqdm(
            total=len(stems),
            desc="evaluating",
            unit="map",
            delay=_PROGRESS_DELAY_S,
            leave=False,
            disable=None if progress else True,  # None: shown on a terminal only
        ) as bar,
    ):
        results = pool.map(lambda stem: _measure_pair(metrics, maps[stem], masks[stem], resize), stems)
        for stem, (records, skipped, warnings) in zip(stems, results):
            report.skipped += skipped
            report.warnings += warnings
            if records is not None:
                metrics.add(records)
                report.per_image.append({"stem": stem, "map": str(maps[stem]), **image_scores(records)})
            bar.update()
    report.count = len(metrics)
    if report.count:
        results = metrics.results()
        report.scores = {key: results[key] for key in SCORE_KEYS}
        report.curves = {key: value for key, value in results.items() if np.ndim(value) == 1}
    return report


def write_json(report: EvalReport, path: str | os.PathLike) -> None:
    """The scores, definitions and input problems as JSON (atomically)."""
    path = Path(path)
    refuse_overlap(path, [report.pred_dir, report.gt_dir])
    atomic_write_bytes(path, (json.dumps(report.to_json_dict(), indent=2) + "\n").encode())


def write_per_image_csv(report: EvalReport, path: str | os.PathLike) -> None:
    """One row per scored image: its stem, map file and own scores (atomically)."""
    path = Path(path)
    refuse_overlap(path, [report.pred_dir, report.gt_dir])
    buffer = io.StringIO()
    if report.per_image:
        writer = csv.DictWriter(buffer, fieldnames=list(report.per_image[0]), lineterminator="\n")
        writer.writeheader()
        for row in report.per_image:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_curves(report: EvalReport, path: str | os.PathLike) -> None:
    """The PR, ROC, F-vs-threshold and E-vs-threshold curves as an npz archive (atomically).

    Arrays (256 entries, threshold k/255 ascending): ``thresholds``, dataset-level ``precision``, ``recall``,
    ``f_curve``, ``tpr``, ``fpr``; image-level ``precision_image``, ``recall_image``, ``f_curve_image``; ``e_curve``.
    """
    path = Path(path)
    refuse_overlap(path, [report.pred_dir, report.gt_dir])
    buffer = io.BytesIO()
    np.savez(buffer, **report.curves)
    atomic_write_bytes(path, buffer.getvalue())


def format_summary(report: EvalReport) -> str:
    """A readable summary that says which definition each number uses."""
    lines = [
        f"{report.count} maps in {report.pred_dir} scored against {report.gt_dir} "
        f"({len(report.skipped)} skipped, {len(report.unmatched_maps)} maps without mask, "
        f"{len(report.unmatched_masks)} masks without map)",
    ]
    if not report.count:
        return lines[0]
    for metric in METRICS:  # as each metric declares itself: one line, or a heading and a line of its scores
        if len(metric.SCORES) == 1:
            lines.append(f"{metric.TITLE:<12}{report.scores[metric.SCORES[0].key]:.4f}")
        else:
            lines += [
                metric.TITLE,
                "  " + "    ".join(f"{score.label}  {report.scores[score.key]:.4f}" for score in metric.SCORES),
            ]
    missing = len(report.skipped) + len(report.unmatched_masks)
    if missing:  # last, where a reader of the scores looks: they cover only part of the masks
        lines.append(
            f"incomplete: {missing} of {report.count + missing} masks have no scored map "
            f"({len(report.unmatched_masks)} without a map, {len(report.skipped)} skipped)"
        )
    return "\n".join(lines)
