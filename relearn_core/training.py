"""Training a re-learner from what its labelled images give (relearn_core/pipeline.py: ``training_image``): the pair
filter on Table I's labels, then the joint re-learner on the re-learned superpixels.

How far the re-learner moves the base is decided on the training images alone: a share of them is held out, and the
epoch whose final maps (joined with the base, as wrap writes them) have the lowest MAE there is kept, epoch 0, the base
itself, included (``held_out_mae``). A re-learner that does not improve the written maps of images it did not train on
leaves the base as it is.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from .checkpoint import Relearner
from .config import RelearnConfig
from .errors import RelearnError
from .records import ImageEvidence, TrainingImage
from .relearning.joint import (
    JointRelearner,
    PairBatch,
    predict_joint,
    split_groups,
    train_joint,
)
from .relearning.pair_filter import train_pair_filter
from .relearning.saliency import join_with_base

Progress = Callable[[str, int, int], None]  #: (stage, done, total)


def negative_cap(config: RelearnConfig, images: int) -> int:
    """Negative pairs kept per training image for the pair filter: negatives are plentiful, so a share per image keeps
    its training set small with wide (VGG) features."""
    return max(50, int(np.ceil(2 * config.filter.negatives / max(images, 1))))


def fit(
    base: str,
    images: list[TrainingImage | None],
    config: RelearnConfig = RelearnConfig(),
    device: str = "cpu",
    progress: Progress | None = None,
) -> Relearner:
    """Train the pair filter and the joint re-learner for ``base`` from its training images (None: an image with no
    usable neighbour)."""
    progress = progress or (lambda stage, done, total: None)
    usable = [image for image in images if image is not None]
    if not usable:
        raise RelearnError("no training image has a usable neighbour in the pool: give a larger --pool")
    summary = {
        "targets": len(images),
        "targets_with_neighbours": len(usable),
        "trained_on": [[image.evidence.entry.name, image.evidence.entry.hash] for image in usable],
        "pairs": sum(image.pairs for image in usable),
        "positive_pairs": sum(image.positive_pairs for image in usable),
    }
    filter_cf = np.concatenate([image.filter_cf for image in usable])
    filter_labels = np.concatenate([image.filter_labels for image in usable])
    pair_filter = None
    if config.use_filter:
        try:
            progress("pair filter", 0, 1)
            pair_filter = train_pair_filter(filter_cf, filter_labels, config.filter, device)
            progress("pair filter", 1, 1)
        except RelearnError as exc:
            warnings.warn(f"pair filter not trained, every aligned pair is kept: {exc}", stacklevel=2)
    summary["filter"] = pair_filter is not None
    del filter_cf
    relearner = Relearner(base, config, pair_filter, None, usable[0].cf.shape[2], summary)  # type: ignore[arg-type]
    batches, targets_z, groups, superpixel_ids, held_images = [], [], [], [], []
    for image in usable:
        keep = relearner.keep(image.cf, image.valid, device)
        rows = keep.any(1)
        if rows.any():
            batches.append(
                PairBatch(image.cf[rows], image.similarity[rows].astype(np.float32), keep[rows], image.prior[rows])
            )
            targets_z.append(image.salient_share[rows])
            groups.append(np.full(int(rows.sum()), len(held_images)))
            superpixel_ids.append(image.superpixels[rows])
            held_images.append((image.evidence, image.gt))
    if not batches:
        raise RelearnError("no unsure superpixel of the training images has a kept neighbour pair: nothing to re-learn")
    batch = PairBatch.joined(batches)
    groups, superpixel_ids = np.concatenate(groups), np.concatenate(superpixel_ids)
    held_out = split_groups(groups, config.joint.validation_share, config.joint.seed)
    summary["relearned_superpixels"] = len(batch)
    summary["validation_images"] = len(np.unique(groups[held_out]))

    held_out_errors = []  # epoch 0 (the base), 1, 2, ...
    held_pairs, held_groups, held_superpixels = batch.take(held_out), groups[held_out], superpixel_ids[held_out]

    def held_out_error(model: JointRelearner) -> float:
        held_out_errors.append(held_out_mae(model, held_pairs, held_groups, held_superpixels, held_images, device))
        progress("joint epochs", len(held_out_errors) - 1, config.joint.epochs)
        return held_out_errors[-1]

    relearner.joint, history = train_joint(
        batch, np.concatenate(targets_z), config.joint, device, held_out, held_out_error
    )
    summary["classifier_errors"] = history[-1] if history else []
    if held_out_errors:
        epoch = int(np.argmin(held_out_errors))
        summary["held_out_mae"] = {"base": held_out_errors[0], "relearned": held_out_errors[epoch], "epoch": epoch}
    return relearner


def held_out_mae(
    model: JointRelearner,
    pairs: PairBatch,
    groups: np.ndarray,
    superpixel_ids: np.ndarray,
    images: list[tuple[ImageEvidence, np.ndarray]],
    device: str = "cpu",
) -> float:
    """Mean absolute error to the ground truth of the final maps (the join with the base, as wrap makes them) of the
    held-out training images, the images ``images[g]`` of the rows' groups ``g``: what the epoch is chosen by, so that
    a re-learner whose corrections do not make the written maps better stays at the base."""
    scores = predict_joint(model, pairs, device)
    errors = []
    for group in np.unique(groups):
        evidence, gt = images[group]
        rows = groups == group
        relearned = np.full(evidence.superpixels.count, np.nan)
        relearned[superpixel_ids[rows]] = scores[rows]
        saliency = join_with_base(
            evidence.entry.image, evidence.base_map, evidence.superpixels, relearned, evidence.pseudo_gt
        )
        errors.append(np.abs(saliency - gt).mean())
    return float(np.mean(errors))
