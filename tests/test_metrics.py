"""Metrics against the published values, PySODMetrics 1.6.2, brute-force definitions and hand-computed cases."""

import warnings

import cv2
import numpy as np
import py_sod_metrics  # the reference implementation (installed by the README's set-up)
import pytest
from scipy.stats import rankdata

from relearn_core.evaluation.evaluate import evaluate_folders
from relearn_core.evaluation.metrics import (
    MAE,
    THRESHOLDS,
    DatasetPR,
    Emeasure,
    ImageFmeasure,
    ImagePair,
    SaliencyMetrics,
    Smeasure,
    WeightedFmeasure,
)

SUBSET_STEP = 10  # every 10th SOD image: 30 per method keeps the PySODMetrics comparison to a few seconds


def _pysod_scores(pairs, normalize=True):
    """PySODMetrics' values for the pairs (uint8 maps and masks when normalize, float maps and bool masks otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PySODMetrics warns that Fmeasure is deprecated
        reference = {
            "f": py_sod_metrics.Fmeasure(),
            "mae": py_sod_metrics.MAE(),
            "s": py_sod_metrics.Smeasure(),
            "e": py_sod_metrics.Emeasure(),
            "wf": py_sod_metrics.WeightedFmeasure(),
        }
        for pred, gt in pairs:
            for metric in reference.values():
                metric.step(pred, gt, normalize=normalize)
        fm = reference["f"].get_results()["fm"]
        em = reference["e"].get_results()["em"]
    return {
        "max_f_image": fm["curve"].max(),
        "mean_f_image": fm["curve"].mean(),
        "adp_f_image": fm["adp"],
        "mae": reference["mae"].get_results()["mae"],
        "s_measure": reference["s"].get_results()["sm"],
        "max_e": em["curve"].max(),
        "mean_e": em["curve"].mean(),
        "adp_e": em["adp"],
        "weighted_f": reference["wf"].get_results()["wfm"],
        "f_curve": fm["curve"],
        "e_curve": em["curve"],
    }


def _sod_pairs(sod_dir, method):
    stems = sorted(path.stem for path in (sod_dir / "gt").glob("*.png"))[::SUBSET_STEP]
    return [
        (
            cv2.imread(str(sod_dir / "maps" / method / f"{stem}.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(sod_dir / "gt" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE),
        )
        for stem in stems
    ]


def test_dss_on_sod_gives_the_published_scores(sod_dir):
    report = evaluate_folders(sod_dir / "maps" / "DSS", sod_dir / "gt", progress=False)
    assert report.count == 300
    assert report.scores["max_f"] == pytest.approx(0.844, abs=0.001)
    assert report.scores["mae"] == pytest.approx(0.121, abs=0.001)


@pytest.mark.parametrize("method", ["DSS", "Amulet"])
def test_every_pysodmetrics_metric_agrees_on_sod_maps(sod_dir, method):
    pairs = _sod_pairs(sod_dir, method)
    ours = SaliencyMetrics()
    for pred, gt in pairs:
        ours.step(pred, gt)
    results = ours.results()
    reference = _pysod_scores(pairs)
    for key in (
        "max_f_image",
        "mean_f_image",
        "adp_f_image",
        "mae",
        "s_measure",
        "max_e",
        "mean_e",
        "adp_e",
        "weighted_f",
    ):
        assert results[key] == pytest.approx(reference[key], abs=1e-4), key
    # PySODMetrics orders its curves from threshold 255 down to 0.
    np.testing.assert_allclose(results["f_curve_image"], reference["f_curve"][::-1], atol=1e-10)
    np.testing.assert_allclose(results["e_curve"], reference["e_curve"][::-1], atol=1e-10)


def test_float_maps_agree_with_pysodmetrics(sod_dir):
    """Maps that are not 8-bit (resized: floats between the 256 levels) take the per-pixel path."""
    pairs = []
    for pred, gt in _sod_pairs(sod_dir, "Amulet")[:8]:
        small = cv2.resize(pred.astype(np.float64) / 255, (97, 61), interpolation=cv2.INTER_AREA)
        small = (small - small.min()) / (small.max() - small.min())  # min 0, max 1: normalising changes nothing
        pairs.append((small, cv2.resize(gt, (97, 61), interpolation=cv2.INTER_NEAREST) > 128))
    ours = SaliencyMetrics()
    for pred, gt in pairs:
        ours.step(pred, gt)
    results = ours.results()
    reference = _pysod_scores(pairs, normalize=False)
    for key in ("max_f_image", "mean_f_image", "mae", "s_measure", "max_e", "mean_e", "adp_e", "weighted_f"):
        assert results[key] == pytest.approx(reference[key], abs=1e-4), key


def _brute_force_dataset_f(pairs, beta2=0.3):
    """The paper's max F straight from its definition: a binary map per threshold, counted pixel by pixel."""
    precisions, recalls = [], []
    for pred, gt in pairs:
        scaled = pred / pred.max()
        binary = scaled[None, :, :] >= THRESHOLDS[:, None, None]
        tp = (binary & gt).sum(axis=(1, 2))
        predicted = binary.sum(axis=(1, 2))
        precisions.append(np.where(predicted > 0, tp / np.maximum(predicted, 1), 0.0))
        recalls.append(tp / gt.sum())
    precision, recall = np.mean(precisions, axis=0), np.mean(recalls, axis=0)
    f = (1 + beta2) * precision * recall / np.where(precision + recall > 0, beta2 * precision + recall, 1)
    return f.max(), precision, recall


@pytest.mark.parametrize("eight_bit", [True, False])
def test_dataset_level_curves_follow_the_definition(sod_dir, eight_bit, rng):
    pairs = []
    for pred, gt in _sod_pairs(sod_dir, "Amulet")[:6]:
        pred = pred[::4, ::4].astype(np.float64) / 255
        if not eight_bit:  # values off the 256 levels, some exactly on them
            pred = np.clip(pred + rng.normal(0, 0.01, pred.shape), 0, 1)
            pred[:3] = 128 / 255
        pairs.append((pred, gt[::4, ::4] > 128))
    metric = DatasetPR()
    for pred, gt in pairs:
        metric.step(pred, gt)
    results = metric.results()
    max_f, precision, recall = _brute_force_dataset_f(pairs)
    np.testing.assert_allclose(results["precision"], precision, atol=1e-12)
    np.testing.assert_allclose(results["recall"], recall, atol=1e-12)
    assert results["max_f"] == pytest.approx(max_f, abs=1e-12)


def test_auc_of_one_image_is_the_rank_statistic_of_eq_11(sod_dir):
    pred, gt = _sod_pairs(sod_dir, "Amulet")[3]
    pred, gt = pred[::3, ::3], gt[::3, ::3] > 128
    assert pred.max() == 255  # every distinct value is one of the 256 thresholds
    metric = DatasetPR()
    metric.step(pred, gt)
    ranks = rankdata(pred.ravel())  # ties get their mean rank
    positives, negatives = gt.sum(), (~gt).sum()
    rank_auc = (ranks[gt.ravel()].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    assert metric.results()["auc"] == pytest.approx(rank_auc, abs=1e-12)


def _square_mask(size=40, inner=(10, 30)):
    gt = np.zeros((size, size), dtype=bool)
    gt[inner[0] : inner[1], inner[0] : inner[1]] = True
    return gt


def _all_scores(pred, gt):
    metrics = SaliencyMetrics()
    metrics.step(pred, gt)
    return metrics.scores()


def test_perfect_map_scores_best():
    gt = _square_mask()
    scores = _all_scores(gt.astype(np.float64), gt)
    for key in ("max_f", "max_f_image", "auc", "s_measure", "weighted_f", "adp_f"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    assert scores["mae"] == 0.0
    assert scores["max_e"] == pytest.approx(gt.size / (gt.size - 1))  # the E-measure divides by n - 1


def test_inverted_map_scores_worst():
    gt = _square_mask()
    fg_fraction = gt.mean()
    scores = _all_scores((~gt).astype(np.float64), gt)
    assert scores["mae"] == 1.0
    assert scores["auc"] == 0.0
    assert scores["s_measure"] == 0.0
    assert scores["weighted_f"] == pytest.approx(0.0, abs=1e-9)
    # Only the threshold 0 (every pixel salient) finds the object: precision = its area fraction, recall 1.
    assert scores["max_f"] == pytest.approx(1.3 * fg_fraction / (0.3 * fg_fraction + 1))


def test_constant_map_is_chance():
    gt = _square_mask()
    p = gt.mean()
    f_all = 1.3 * p / (0.3 * p + 1)  # every pixel salient
    scores = _all_scores(np.full(gt.shape, 0.5), gt)
    assert scores["auc"] == pytest.approx(0.5)
    assert scores["max_f"] == pytest.approx(f_all)
    assert scores["mean_f"] == pytest.approx(f_all)  # the max-divided map is all ones: every threshold selects all
    assert scores["mae"] == pytest.approx(0.5)  # a constant map is not normalised
    assert scores["max_f_image"] == pytest.approx(f_all)
    assert scores["mean_f_image"] == pytest.approx(f_all / 2)  # levels 0..127 select all, 128..255 none


def test_all_zero_mask():
    gt = np.zeros((30, 40), dtype=bool)
    pred = np.linspace(0, 1, gt.size).reshape(gt.shape)
    scores = _all_scores(pred, gt)
    assert scores["max_f"] == 0.0 and scores["max_f_image"] == 0.0 and scores["weighted_f"] == 0.0
    assert scores["mae"] == pytest.approx(0.5)
    assert scores["s_measure"] == pytest.approx(0.5)  # 1 - mean(pred)
    # E-measure of an empty mask counts the pixels predicted background, (n - 1) / (n - 1) at the top level where
    # only the brightest pixel is salient.
    assert scores["max_e"] == pytest.approx(1.0)


def test_all_one_mask():
    gt = np.ones((30, 40), dtype=bool)
    pred = np.linspace(0, 1, gt.size).reshape(gt.shape)
    scores = _all_scores(pred, gt)
    assert scores["max_f"] == pytest.approx(1.0)  # threshold 0: every pixel salient, every one right
    assert scores["mae"] == pytest.approx(0.5)
    assert scores["s_measure"] == pytest.approx(0.5)  # mean(pred)


def test_metric_classes_alone_equal_the_suite(sod_dir):
    pairs = _sod_pairs(sod_dir, "DSS")[:5]
    suite = SaliencyMetrics()
    single = [DatasetPR(), ImageFmeasure(), MAE(), Smeasure(), Emeasure(), WeightedFmeasure()]
    for pred, gt in pairs:
        suite.step(pred, gt)
        for metric in single:
            metric.step(pred, gt)
    merged = {}
    for metric in single:
        merged.update(metric.results())
    for key, value in suite.scores().items():
        assert merged[key] == value, key
    assert len(suite) == 5 and single[0].per_image()["adp_f"].shape == (5,)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="differs"):
        ImagePair(np.zeros((4, 5)), np.zeros((5, 4), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        ImagePair(np.full((4, 4), np.nan), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImagePair(np.full((4, 4), 2.0), np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="no image"):
        MAE().results()
