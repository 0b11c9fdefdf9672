"""Training a re-learner from what its labelled images give (relearn_core/pipeline.py: ``training_image``): the fusion
of the base with the backbone's own saliency map, the pair filter on Table I's labels, then the joint re-learner.

How far the re-learner moves the map it corrects is decided on the training images alone: a share of them is held out
(from the fusion and the joint re-learner), and the epoch and the shrink of the correction whose final maps (as wrap
writes them) score best there are kept (``RelearnConfig.select``), epoch 0, no correction, included. A re-learner that
does not improve the written maps of images it did not train on leaves them as they were before its correction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .checkpoint import Relearner
from .config import RelearnConfig
from .errors import RelearnError
from .evaluation.metrics import MAE, DatasetPR
from .imageio import eight_bit
from .records import TrainingImage
from .relearning.joint import JointRelearner, PairBatch, predict_joint, split_groups, train_joint
from .relearning.pair_filter import train_pair_filter
from .relearning.saliency import Spreading, fuse, join_with_base, logit, spreading

log = logging.getLogger("relearn")

Progress = Callable[[str, int, int], None]  #: (stage, done, total)
FUSION_PIXELS = 2000  #: pixels sampled per training image to fit the fusion's three weights
IDENTITY_FUSION = (1.0, 0.0, 0.0)


def negative_cap(config: RelearnConfig, images: int) -> int:
    """Negative pairs kept per training image for the pair filter: negatives are plentiful, so a share per image keeps
    its training set small with wide (VGG) features."""
    return max(50, int(np.ceil(2 * config.filter.negatives / max(images, 1))))


def held_out_images(count: int, config: RelearnConfig) -> np.ndarray:
    """bool (count,): the training images held out to choose the epoch and the shrink (``joint.validation_share``)."""
    return split_groups(np.arange(count), config.joint.validation_share, config.joint.seed)


def fit_fusion(
    maps: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]], seed: int = 0
) -> tuple[float, float, float]:
    """(a, b, c) of sigmoid(a logit(base) + b logit(knowledge) + c): logistic regression of the ground truth on the
    two maps' logits over pixels sampled from ``maps`` = [(base map, knowledge map or None, mask), ...].

    The knowledge map is the backbone's own saliency (U2-Net-p's, learned on DUTS-TR): its weight says how far to trust
    it beside the base, on these training images; without one, (a, c) calibrate the base alone."""
    rng = np.random.RandomState(seed)
    columns, truth = [], []
    for base_map, knowledge_map, gt in maps:
        pick = rng.choice(base_map.size, min(FUSION_PIXELS, base_map.size), replace=False)
        knowledge = np.zeros(len(pick)) if knowledge_map is None else logit(knowledge_map.ravel()[pick])
        columns.append(np.column_stack([logit(base_map.ravel()[pick]), knowledge]))
        truth.append(gt.ravel()[pick])
    x = torch.tensor(np.concatenate(columns), dtype=torch.float64)
    y = torch.tensor(np.concatenate(truth), dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(x @ weights[:2] + weights[2], y)
        value.backward()
        return value

    optimiser.step(loss)
    a, b, c = (float(w) for w in weights.detach())
    return a, b, c


def fit(
    base: str,
    images: list[TrainingImage | None],
    held_out: np.ndarray,
    config: RelearnConfig,
    device: str = "cpu",
    progress: Progress | None = None,
    knowledge: str = "",
    fusion: tuple[float, float, float] = IDENTITY_FUSION,
) -> Relearner:
    """Train the pair filter and the joint re-learner for ``base`` from its training images (None: an image with no
    usable neighbour); ``held_out`` (bool, one per image) marks those kept to choose the epoch and the shrink."""
    progress = progress or (lambda stage, done, total: None)
    usable = [(image, bool(held)) for image, held in zip(images, held_out) if image is not None]
    if not usable:
        raise RelearnError("no training image has a usable neighbour in the pool: give a larger --pool")
    summary = {
        "targets": len(images),
        "targets_with_neighbours": len(usable),
        "trained_on": [[image.evidence.entry.name, image.evidence.entry.hash] for image, _ in usable],
        "pairs": sum(image.pairs for image, _ in usable),
        "positive_pairs": sum(image.positive_pairs for image, _ in usable),
    }
    # the filter learns from the images the joint re-learner trains on: the held-out ones judge both
    filter_cf = np.concatenate([image.filter_cf for image, held in usable if not held])
    filter_labels = np.concatenate([image.filter_labels for image, held in usable if not held])
    pair_filter = None
    if config.use_filter and config.alignment != "none":
        try:
            progress("pair filter", 0, 1)
            pair_filter = train_pair_filter(filter_cf, filter_labels, config.filter, device)
            progress("pair filter", 1, 1)
        except RelearnError as exc:
            log.warning(f"pair filter not trained, every aligned pair is kept: {exc}")
    summary["filter"] = pair_filter is not None
    del filter_cf
    relearner = Relearner(base, config, pair_filter, None, usable[0][0].cf.shape[2], summary, knowledge, fusion)  # type: ignore[arg-type]
    batches, targets_z, pixels, groups, superpixel_ids, judged, held_rows = [], [], [], [], [], [], []
    for image, held in usable:
        keep = relearner.keep(image.cf, image.valid, device)
        rows = keep.any(1)
        if rows.any():
            batches.append(
                PairBatch(image.cf[rows], image.similarity[rows].astype(np.float32), keep[rows], image.prior[rows])
            )
            targets_z.append(image.salient_share[rows])
            segments = image.evidence.superpixels
            pixels.append(np.bincount(segments.labels.ravel(), minlength=segments.count)[image.superpixels[rows]])
            groups.append(np.full(int(rows.sum()), len(judged)))
            superpixel_ids.append(image.superpixels[rows])
            held_rows.append(np.full(int(rows.sum()), held))
            judged.append(image)
    if not batches:
        raise RelearnError("no superpixel of the training images has a kept neighbour pair: nothing to re-learn")
    batch = PairBatch.joined(batches)
    groups, superpixel_ids, held_rows = (
        np.concatenate(groups),
        np.concatenate(superpixel_ids),
        np.concatenate(held_rows),
    )
    summary["relearned_superpixels"] = len(batch)
    summary["validation_images"] = len(np.unique(groups[held_rows]))

    scores_by_epoch = []  # epoch 0 (no correction), 1, 2, ...: (objective, shrink, max F, MAE) of the best shrink
    held_pairs, held_groups, held_superpixels = batch.take(held_rows), groups[held_rows], superpixel_ids[held_rows]
    spreadings: dict[int, Spreading] = {}  # each held-out image's spatial weighting, built once for all epochs

    def held_out_error(model: JointRelearner) -> float:
        first = not scores_by_epoch
        scored = [
            written_scores(
                held_out_maps(
                    model, held_pairs, held_groups, held_superpixels, judged, config, shrink, device, spreadings
                )
            )
            for shrink in ((1.0,) if first else config.shrinks)
        ]
        best = max(zip(scored, (1.0,) if first else config.shrinks), key=lambda item: objective(config, *item[0]))
        (max_f, mae), shrink = best
        scores_by_epoch.append((objective(config, max_f, mae), shrink, max_f, mae))
        progress("joint epochs", len(scores_by_epoch) - 1, config.joint.epochs)
        return -scores_by_epoch[-1][0]

    relearner.joint, history = train_joint(
        batch, np.concatenate(targets_z), config.joint, device, held_rows, held_out_error, np.concatenate(pixels)
    )
    summary["classifier_errors"] = history[-1] if history else []
    if scores_by_epoch:
        epoch = int(np.argmax([score for score, *_ in scores_by_epoch]))
        _, relearner.shrink, max_f, mae = scores_by_epoch[epoch]
        _, _, start_max_f, start_mae = scores_by_epoch[0]
        summary["held_out"] = {
            "epoch": epoch,
            "shrink": relearner.shrink,
            "select": config.select,
            "before": {"max_f": start_max_f, "mae": start_mae},
            "after": {"max_f": max_f, "mae": mae},
        }
        if epoch > 0 and config.confidence > 0:
            after = held_out_maps(
                relearner.joint,
                held_pairs,
                held_groups,
                held_superpixels,
                judged,
                config,
                relearner.shrink,
                device,
                spreadings,
            )
            before = [(judged[group].start_map, judged[group].gt) for group in np.unique(held_groups)]
            confidence = gain_confidence(before, list(after), config)
            summary["held_out"] |= {"confidence": confidence, "best_epoch": epoch}
            if confidence < config.confidence:  # the gain may be the held-out images' luck: no correction
                summary["held_out"]["epoch"] = 0
    return relearner


def gain_confidence(
    before: Sequence[tuple[np.ndarray, np.ndarray]],
    after: Sequence[tuple[np.ndarray, np.ndarray]],
    config: RelearnConfig,
    resamples: int = 1000,
) -> float:
    """The share of bootstrap resamples of the images (the same images drawn for both) whose ``after`` maps score
    above their ``before`` maps by ``config.select``, each (map, mask) scored as wrap writes it: how sure a gain
    measured on a few held-out images is."""
    metrics = [_written_metrics(maps) for maps in (before, after)]
    samples = np.random.default_rng(config.joint.seed).integers(0, len(before), (resamples, len(before)))
    scores = [objective(config, max_f.resampled(samples), mae.resampled(samples)) for max_f, mae in metrics]
    return float(np.mean(scores[1] > scores[0]))


def objective(config: RelearnConfig, max_f: float, mae: float) -> float:
    """What the epoch and the shrink are chosen by (higher is better)."""
    if config.select == "max_f-mae":
        return max_f - mae
    if config.select == "max_f":
        return max_f
    if config.select == "mae":
        return -mae
    raise RelearnError(f"unknown select {config.select!r}: expected 'max_f-mae', 'max_f' or 'mae'")


def shrunk(scores: np.ndarray, prior: np.ndarray, shrink: float) -> np.ndarray:
    """Re-learned probabilities with their correction's logit scaled by ``shrink`` (1: as learned, 0: the prior)."""
    return 1.0 / (1.0 + np.exp(-(shrink * logit(scores) + (1.0 - shrink) * prior)))


def final_map(
    evidence, start_map: np.ndarray, relearned: np.ndarray, config: RelearnConfig, spread_by: Spreading | None = None
) -> np.ndarray:
    """The map wrap writes from re-learned superpixel probabilities (NaN: none): the start map (the base, or the
    fused map) corrected everywhere, or with join "paper" only where the pseudo-GT is unsure; ``spread_by``: the
    image's spatial weighting when the caller keeps it."""
    changeable = evidence.pseudo_gt.unsure if config.join == "paper" else None
    return join_with_base(evidence.entry.image, start_map, evidence.superpixels, relearned, changeable, spread_by)


def choose_fusion(
    fusion: tuple[float, float, float],
    held: Sequence[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    config: RelearnConfig,
) -> tuple[tuple[float, float, float], dict]:
    """The learned ``fusion`` at the sharpness (``config.sharpness``: factors of its logit) that scores best on the
    ``held`` training images [(base map, knowledge map or None, mask), ...] by ``config.select``, or the base alone
    (the identity) when that scores better: logistic regression fits the pixels' cross-entropy, not max F or MAE, and a
    base re-learned with its own network gains nothing from fusing with itself. Returns the chosen weights and the
    candidates' held-out scores (with no held image: the learned fusion as it is)."""
    if not held:
        return fusion, {"weights": list(fusion), "learned": list(fusion), "sharpness": 1.0, "kept": True}

    def scores(weights: tuple[float, float, float]) -> dict:
        max_f, mae = written_scores(
            (base_map if weights == IDENTITY_FUSION else fuse(base_map, knowledge_map, weights), gt)
            for base_map, knowledge_map, gt in held
        )
        return {"max_f": max_f, "mae": mae}

    base = scores(IDENTITY_FUSION)
    sharpened = {factor: scores(sharper(fusion, factor)) for factor in config.sharpness}
    factor = max(config.sharpness, key=lambda f: objective(config, **sharpened[f]))
    better = objective(config, **sharpened[factor]) > objective(config, **base)
    chosen = sharper(fusion, factor)
    return (chosen if better else IDENTITY_FUSION), {
        "weights": list(chosen),
        "learned": list(fusion),
        "sharpness": factor,
        "base": base,
        "fused": sharpened[factor],
        "by_sharpness": {str(f): score for f, score in sharpened.items()},
        "kept": better,
    }


def sharper(fusion: tuple[float, float, float], factor: float) -> tuple[float, float, float]:
    """The fusion with its logit scaled by ``factor``: the same ranking of pixels, a crisper map above 1."""
    return tuple(factor * weight for weight in fusion)  # type: ignore[return-value]


def held_out_maps(
    model: JointRelearner,
    pairs: PairBatch,
    groups: np.ndarray,
    superpixel_ids: np.ndarray,
    images: list[TrainingImage],
    config: RelearnConfig,
    shrink: float,
    device: str = "cpu",
    spreadings: dict[int, Spreading] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The final maps (as wrap makes them) and masks of the held-out training images ``images[g]`` of the rows'
    groups ``g``; ``spreadings`` keeps each group's spatial weighting across calls (None: built per call)."""
    spreadings = {} if spreadings is None else spreadings
    scores = shrunk(predict_joint(model, pairs, device), pairs.prior, shrink)
    for group in np.unique(groups):
        image = images[group]
        rows = groups == group
        relearned = np.full(image.evidence.superpixels.count, np.nan)
        relearned[superpixel_ids[rows]] = scores[rows]
        if group not in spreadings:
            spreadings[group] = spreading(image.evidence.entry.image, image.evidence.superpixels)
        yield final_map(image.evidence, image.start_map, relearned, config, spreadings[group]), image.gt


def _written_metrics(maps: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[DatasetPR, MAE]:
    """Dataset-level max F and MAE of (map, mask) pairs, each map measured as wrap writes it (8 bits)."""
    max_f, mae = DatasetPR(), MAE()
    for saliency, gt in maps:
        written = eight_bit(saliency)
        max_f.step(written, gt)
        mae.step(written, gt)
    return max_f, mae


def written_scores(maps: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Dataset-level max F and MAE of (map, mask) pairs, each map scored as wrap writes it (8 bits)."""
    max_f, mae = _written_metrics(maps)
    return max_f.results()["max_f"], mae.results()["mae"]
