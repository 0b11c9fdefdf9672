"""The re-learning pipeline (paper Fig. 2): train a re-learner for one base model, and wrap new images with it.

Data flow, top to bottom, for every target image:

    base map                     the adapter's prediction (base.py)
    correspondence               retrieval of the top-5 pool images, superpixels, proposals, SIFT Flow and the
                                 bi-level alignment (correspondence.py; independent of the base, cached)
    pseudo-GT                    two dense CRFs on the base map of every image, target and pool (pseudo_gt.py);
                                 pool images never use ground truth
    features                     backbone features of each superpixel and its surround (features.py), followed by
                                 the base's own verdict on it (see ``saliency_cues``)
    instance pairs               each target superpixel with its aligned superpixel in each neighbour, ordered by
                                 the alignment's similarity g (``instance_pairs``)
    pair filter                  Table I labels on training images; delta of Eq. (6) (pair_filter.py)
    joint                        M = 5 classifiers and the joint classifier, Eqs. (6)-(8) (joint.py)
    saliency                     re-learned superpixel scores back to pixels by spatial weighting and joined with
                                 the base map as a logit residual where the pseudo-GT does not trust it (saliency.py)
    --> Our(X) map

Design choices (why, briefly):
- The re-learner corrects the base, it does not replace it: its logits are residuals over the base's calibrated
  logit (joint.py), the correction is applied per pixel in logit space (saliency.py), so the base's pixel detail stays.
- Only superpixels where the pseudo-GT is unsure (the two CRFs disagree on at least ``min_unsure`` of the pixels) are
  re-learned, in training and at inference: elsewhere the base is trusted and kept exactly. A superpixel whose pairs the
  filter all rejects, and an image with no usable neighbour, keep the base map.
- How far the re-learner moves the base is decided on the training images alone: a share of them is held out, and the
  epoch whose final maps (joined with the base, as wrap writes them) have the lowest MAE there is kept, epoch 0, the
  base itself, included (``held_out_mae``). A re-learner that does not improve the written maps of images it did not
  train on leaves the base as it is.
- Nothing is chosen on the images being wrapped: every setting is fixed in the configuration before training.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np
import torch

from . import __version__
from .base import BaseMapFailure, adapter_options, iter_base_maps
from .cache import Cache
from .correspondence.correspondence_builder import CorrespondenceBuilder, CorrespondenceParams, ImageEntry, PairCorrespondence, read_entry
from .errors import InputError, RelearnError
from .relearning.features import DEFAULT_BACKBONE, superpixel_features
from .imageio import atomic_write_bytes, images_in, list_by_stem, read_mask, write_map
from .relearning.joint import JointConfig, JointRelearner, PairBatch, predict_joint, split_groups, train_joint
from .relearning.pair_filter import (
    FilterConfig,
    PairFilter,
    aligned_iou,
    filter_decisions,
    superpixel_shares,
    table1_labels,
    target_instances,
    train_pair_filter,
)
from .relearning.pseudo_gt import AGGRESSIVE_THETA, CONSERVATIVE_THETA, PseudoGT, bilevel_pseudo_gt
from .correspondence.regions import Superpixels
from .relearning.saliency import join_with_base, superpixel_means

CHECKPOINT_FORMAT = 1
PRIOR_CLIP = 1e-3  #: base probabilities are clipped to [PRIOR_CLIP, 1 - PRIOR_CLIP] before the prior logit
CUES = 5  #: saliency cues appended to each superpixel's backbone feature


@dataclass(frozen=True)
class RelearnConfig:
    """Everything that fixes a re-learner; stored in the checkpoint and checked when it is used."""

    backbone: str = DEFAULT_BACKBONE
    correspondence: CorrespondenceParams = CorrespondenceParams()
    alignment: str = "bilevel"  #: "bilevel" (Eq. (1), top-K alternation) or "flow" (SIFT Flow matches alone)
    use_filter: bool = True  #: False: every aligned pair is kept (delta = 1), ablation C2
    min_unsure: float = 0.2  #: a superpixel is re-learned when at least this share of it is pseudo-GT unsure
    filter: FilterConfig = FilterConfig()
    joint: JointConfig = JointConfig()

    def to_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, overrides: Mapping) -> "RelearnConfig":
        """A copy with nested fields replaced, e.g. ``{"joint": {"epochs": 10}, "backbone": "vgg16-hed"}``."""

        def merge(base: dict, extra: Mapping, where: str) -> dict:
            for key, value in extra.items():
                if key not in base:
                    raise RelearnError(f"unknown configuration field {where}{key!r}; known: {', '.join(base)}")
                base[key] = merge(dict(base[key]), value, f"{where}{key}.") if isinstance(base[key], dict) else value
            return base

        return RelearnConfig.from_dict(merge(self.to_dict(), overrides, ""))

    @classmethod
    def from_dict(cls, values: Mapping) -> "RelearnConfig":
        return _dataclass_from_dict(cls, values)


def _dataclass_from_dict(cls, values: Mapping):
    """Rebuild a (nested) frozen dataclass from ``asdict`` output: nested records by their default's type, lists
    back to tuples where the default is a tuple. Fields absent from ``values`` keep their defaults."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise RelearnError(f"unknown configuration fields {sorted(unknown)} for {cls.__name__}")
    built = {}
    for name, value in values.items():
        field_info = known[name]
        default = field_info.default if field_info.default is not MISSING else None
        if default is not None and is_dataclass(default) and isinstance(value, Mapping):
            value = _dataclass_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        built[name] = value
    return cls(**built)


# --------------------------------------------------------------------------------------------------------------
# Per-image evidence: base map, superpixels, pseudo-GT, features


@dataclass
class ImageEvidence:
    """What the re-learner knows about one image (target or pool) given the base model."""

    entry: ImageEntry
    base_map: np.ndarray  #: float32 (H, W) in [0, 1]
    superpixels: Superpixels
    pseudo_gt: PseudoGT
    descriptor: np.ndarray  #: (S, F + CUES) backbone features and saliency cues of each superpixel
    trusted_salient: np.ndarray  #: (S,) share of pseudo-GT trusted salient pixels
    trusted_background: np.ndarray  #: (S,) share of pseudo-GT trusted background pixels
    base_mean: np.ndarray  #: (S,) mean base value

    @property
    def unsure(self) -> np.ndarray:
        return 1.0 - self.trusted_salient - self.trusted_background


def saliency_cues(base_mean, trusted_salient, trusted_background, superpixels: Superpixels) -> np.ndarray:
    """(S, CUES): the base's mean, the pseudo-GT's trusted shares and the superpixel's centroid (relative).

    These carry what the base model says about a superpixel (and, for an aligned superpixel, about its counterpart in
    the neighbour: the inter-image saliency the paper transfers); the backbone features carry appearance only.
    """
    height, width = superpixels.labels.shape
    centroids = superpixels.centroids() / np.array([width, height])
    return np.column_stack([base_mean, trusted_salient, trusted_background, centroids]).astype(np.float32)


def _map_digest(base_map: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(base_map, dtype=np.float32).tobytes()).hexdigest()[:16]


class EvidenceStore:
    """Computes (and caches on disk) the evidence of images for one base model; shared by every fold and pool."""

    def __init__(self, base_maps: Mapping[str, np.ndarray], backbone: str, cache: Cache, device: str = "cpu"):
        self.base_maps = dict(base_maps)  # image content hash -> base map
        self.backbone = backbone
        self.cache = cache
        self.device = device
        #: compute seconds of each stage's entries (stored in the cache entry, so known on a cache hit too)
        self.seconds: dict[str, dict[str, float]] = defaultdict(dict)
        self._evidence: dict[str, ImageEvidence] = {}

    def has(self, entry: ImageEntry) -> bool:
        return entry.hash in self.base_maps

    def _cached(self, stage: str, hashes: list[str], params: dict, compute: Callable[[], dict]) -> dict:
        def timed():
            start = time.perf_counter()
            arrays = compute()
            return {"seconds": np.float64(time.perf_counter() - start), **arrays}

        arrays = self.cache.get_or_compute(stage, hashes, params, timed)
        self.seconds[stage][Cache.key(hashes, params)] = float(arrays.get("seconds", 0.0))
        return arrays

    def evidence(self, entry: ImageEntry, builder: CorrespondenceBuilder) -> ImageEvidence:
        if entry.hash in self._evidence:
            return self._evidence[entry.hash]
        base_map = self.base_maps[entry.hash]
        regions = builder.superpixels(entry)
        pgt_params = {"aggressive": AGGRESSIVE_THETA, "conservative": CONSERVATIVE_THETA, "version": 1}
        arrays = self._cached("pseudo_gt", [entry.hash, _map_digest(base_map)], pgt_params,
                              lambda: _pseudo_gt_arrays(entry.image, base_map))
        pgt = PseudoGT(arrays["salient"].astype(bool), arrays["background"].astype(bool))
        feature_params = {"backbone": self.backbone, "superpixels": regions.count, "version": 1}
        features = self._cached("features", [entry.hash, _map_digest(regions.labels)], feature_params, lambda: {
            "values": superpixel_features([entry.image], [regions], self.backbone, self.device)[0].values
        })["values"]
        salient = superpixel_shares(regions.labels, pgt.salient, regions.count)
        background = superpixel_shares(regions.labels, pgt.background, regions.count)
        base_mean = superpixel_means(base_map, regions)
        descriptor = np.concatenate([features, saliency_cues(base_mean, salient, background, regions)], 1)
        found = ImageEvidence(entry, base_map, regions, pgt, descriptor.astype(np.float32), salient, background, base_mean)
        self._evidence[entry.hash] = found
        return found


def _pseudo_gt_arrays(image: np.ndarray, base_map: np.ndarray) -> dict[str, np.ndarray]:
    pgt = bilevel_pseudo_gt(image, base_map)
    return {"salient": pgt.salient, "background": pgt.background}


# --------------------------------------------------------------------------------------------------------------
# Instance pairs


@dataclass
class TargetPairs:
    """The instance pairs of one target image: for each superpixel, up to M aligned superpixels by descending g."""

    evidence: ImageEvidence
    neighbours: list[ImageEvidence]
    source: np.ndarray  #: (S, M) int: which neighbour (index into ``neighbours``), -1 where missing
    aligned: np.ndarray  #: (S, M) int: the aligned superpixel in that neighbour, -1 where missing
    similarity: np.ndarray  #: (S, M) g in [0, 1], 0 where missing
    cf: np.ndarray  #: (S, M, D) pair features, zeros where missing

    @property
    def valid(self) -> np.ndarray:
        return self.source >= 0

    def aligned_share(self, shares: str) -> np.ndarray:
        """(S, M) a per-superpixel array (attribute name of ImageEvidence) of each aligned superpixel; 0 where missing."""
        out = np.zeros(self.source.shape)
        for k, neighbour in enumerate(self.neighbours):
            hit = self.source == k
            out[hit] = getattr(neighbour, shares)[self.aligned[hit]]
        return out


def match_similarity(distances: np.ndarray, support: np.ndarray) -> np.ndarray:
    """g in [0, 1] of superpixel matches: exp(-d / median d of the pair) times the object-level support.

    d is Eq. (2)'s SIFT Flow distance (its scale depends on the image pair, hence the median), the support the share
    of the proposals around the target superpixel that the bi-level alignment sent where its match lies.
    """
    if len(distances) == 0:
        return np.zeros(0)
    scale = max(float(np.median(distances)), 1e-6)
    return np.exp(-np.asarray(distances) / scale) * np.asarray(support)


def _matches(pair: PairCorrespondence, how: str) -> tuple[np.ndarray, np.ndarray]:
    """Superpixel matches (K, 2) and their g, from the bi-level alignment or from SIFT Flow alone."""
    if how == "bilevel":
        a = pair.alignment
        return a.superpixel_matches, match_similarity(a.superpixel_distances, a.support)
    if how == "flow":
        return pair.flow_matches, np.ones(len(pair.flow_matches))
    raise RelearnError(f"unknown alignment {how!r}: expected 'bilevel' or 'flow'")


def instance_pairs(target: ImageEvidence, neighbours: list[ImageEvidence], correspondences: list[PairCorrespondence],
                   neighbour_count: int, alignment: str) -> TargetPairs:
    """Build CF = {target, aligned, g, support} for every target superpixel and aligned neighbour superpixel."""
    count = target.superpixels.count
    k = len(neighbours)
    source = np.full((count, max(k, 1)), -1, np.int64)
    aligned = np.full((count, max(k, 1)), -1, np.int64)
    similarity = np.zeros((count, max(k, 1)))
    for index, pair in enumerate(correspondences):
        matches, g = _matches(pair, alignment)
        if len(matches) == 0:
            continue
        source[matches[:, 0], index] = index
        aligned[matches[:, 0], index] = matches[:, 1]
        similarity[matches[:, 0], index] = g
    # descending trust order per superpixel; missing matches last
    order = np.argsort(-np.where(source >= 0, similarity + 1.0, 0.0), axis=1, kind="stable")[:, :neighbour_count]
    source, aligned, similarity = (np.take_along_axis(a, order, 1) for a in (source, aligned, similarity))
    pad = neighbour_count - source.shape[1]
    if pad > 0:
        source = np.pad(source, ((0, 0), (0, pad)), constant_values=-1)
        aligned = np.pad(aligned, ((0, 0), (0, pad)), constant_values=-1)
        similarity = np.pad(similarity, ((0, 0), (0, pad)))
    dim = target.descriptor.shape[1]
    cf = np.zeros((count, neighbour_count, 2 * dim + 1), np.float32)
    cf[:, :, :dim] = target.descriptor[:, None, :]
    for index, neighbour in enumerate(neighbours):
        hit = source == index
        cf[hit, dim : 2 * dim] = neighbour.descriptor[aligned[hit]]
    cf[:, :, -1] = similarity
    cf[source < 0] = 0.0
    return TargetPairs(target, neighbours, source, aligned, similarity, cf)


def _filter_candidates(labels: np.ndarray, negative_cap: int, rng: np.random.RandomState) -> np.ndarray:
    """Indices of every positive pair and of at most ``negative_cap`` random negative pairs of one image."""
    positive = np.flatnonzero(labels)
    negative = np.flatnonzero(~labels)
    if len(negative) > negative_cap:
        negative = rng.choice(negative, negative_cap, replace=False)
    return np.sort(np.concatenate([positive, negative]))


def prior_logit(base_mean: np.ndarray) -> np.ndarray:
    p = np.clip(base_mean, PRIOR_CLIP, 1.0 - PRIOR_CLIP)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


def relearn_region(evidence: ImageEvidence, min_unsure: float) -> np.ndarray:
    """bool (S,): the superpixels the re-learner handles (pseudo-GT unsure on at least ``min_unsure`` of them)."""
    return evidence.unsure >= min_unsure


# --------------------------------------------------------------------------------------------------------------
# The re-learner: training, inference, checkpoint


@dataclass
class Relearner:
    """A trained re-learner for one base model."""

    base: str
    config: RelearnConfig
    pair_filter: PairFilter | None  #: None when disabled or when the data gave too few positive pairs
    joint: JointRelearner
    pair_features: int
    summary: dict = field(default_factory=dict)  #: counts from training (images, pairs, positives, ...)

    @property
    def keeps_base(self) -> bool:
        """True when training chose epoch 0: no epoch made the held-out training images' maps better than the base's,
        so the re-learner leaves every map as the base made it."""
        return self.summary.get("held_out_mae", {}).get("epoch") == 0

    def keep(self, cf: np.ndarray, valid: np.ndarray, device: str) -> np.ndarray:
        """delta of Eq. (6) for every pair (N, M) of pair features ``cf``: the filter's decision on valid pairs."""
        if self.pair_filter is None:
            return valid
        keep = np.zeros_like(valid)
        keep[valid] = filter_decisions(self.pair_filter, cf[valid], device)
        return keep


Item = TypeVar("Item")
Result = TypeVar("Result")


def side_by_side(work: Callable[[Item], Result], images: list[Item], device: str) -> Iterator[Result]:
    """``work(image)`` of each image (or item naming one), in order. On CPU, as many images at once as torch may use
    threads, each on one torch thread: the stages' kernels release the GIL, and single-threaded stages (EdgeBoxes,
    SLIC, the dense CRFs) then no longer leave cores idle; on another device, one at a time. Torch's thread count is
    restored afterwards. Each image's result is the one it gets alone on one torch thread (tests/test_pipeline.py); a
    lone image runs on all of torch's threads, where SIFT Flow's torch reductions may round differently."""
    threads = torch.get_num_threads()
    workers = max(1, min(threads, len(images))) if torch.device(device).type == "cpu" else 1
    if workers == 1:
        yield from map(work, images)
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield from pool.map(work, images)
    finally:
        torch.set_num_threads(threads)


def _with_neighbours(target: ImageEntry, builder: CorrespondenceBuilder, store: EvidenceStore):
    correspondences = builder.correspondences(target)
    neighbours = [store.evidence(c.neighbour, builder) for c in correspondences]
    return correspondences, neighbours


@dataclass
class TrainingImage:
    """What one training image gives: the pair filter's candidate pairs and their Table I labels, and the rows of its
    re-learned superpixels (unsure, with a valid pair) for the joint re-learner."""

    filter_cf: np.ndarray  #: (P, D) candidate pair features
    filter_labels: np.ndarray  #: (P,) bool
    pairs: int  #: valid pairs of the image, before sampling
    positive_pairs: int
    cf: np.ndarray  #: (R, M, D) pair features of the re-learned superpixels
    similarity: np.ndarray  #: (R, M)
    valid: np.ndarray  #: (R, M) bool
    prior: np.ndarray  #: (R,) the base's logit
    salient_share: np.ndarray  #: (R,) ground-truth share, the target Z
    superpixels: np.ndarray  #: (R,) their ids
    evidence: ImageEvidence
    gt: np.ndarray


def fit(base: str, targets: list[ImageEntry], ground_truth: Mapping[str, np.ndarray], builder: CorrespondenceBuilder,
        store: EvidenceStore, config: RelearnConfig = RelearnConfig(), device: str = "cpu",
        progress: Callable[[str], None] = lambda message: None) -> Relearner:
    """Train the pair filter and the joint re-learner on labelled targets (GT by image hash) against the builder's pool."""
    m = config.joint.neighbours
    filter_cf, filter_labels, joint_parts = [], [], []
    summary_counts = {"pairs": 0, "positive_pairs": 0}
    # negatives are plentiful: keep a share per image so the pool stays small with wide (VGG) features
    negative_cap = max(50, int(np.ceil(2 * config.filter.negatives / max(len(targets), 1))))

    def training_pairs(numbered: tuple[int, ImageEntry]):
        """The pair filter's candidates and labels, and the joint re-learner's rows, of one training image."""
        number, target = numbered
        gt = ground_truth[target.hash]
        evidence = store.evidence(target, builder)
        correspondences, neighbours = _with_neighbours(target, builder, store)
        if not neighbours:
            return None
        pairs = instance_pairs(evidence, neighbours, correspondences, m, config.alignment)
        facts = target_instances(evidence.superpixels.labels, gt, evidence.pseudo_gt.salient, evidence.pseudo_gt.background)
        pair_iou = aligned_iou(facts.gt_class[:, None], facts.class_share[:, None],
                               pairs.aligned_share("trusted_salient"), pairs.aligned_share("trusted_background"))
        labels = table1_labels(facts.pgt_iou, pair_iou)[pairs.valid]
        chosen = _filter_candidates(labels, negative_cap, np.random.RandomState(config.filter.seed + number))
        # only the re-learned superpixels' pairs are kept: all pairs of every image do not fit in memory with VGG features
        region = relearn_region(evidence, config.min_unsure) & pairs.valid.any(1)
        return TrainingImage(pairs.cf[pairs.valid][chosen], labels[chosen], len(labels), int(labels.sum()),
                             pairs.cf[region], pairs.similarity[region], pairs.valid[region],
                             prior_logit(evidence.base_mean[region]), facts.salient_share[region],
                             np.flatnonzero(region), evidence, gt)

    for number, found in enumerate(side_by_side(training_pairs, list(enumerate(targets, 1)), device), 1):
        progress(f"pairs {number}/{len(targets)} {targets[number - 1].name}")
        if found is None:
            continue
        filter_cf.append(found.filter_cf)
        filter_labels.append(found.filter_labels)
        summary_counts["pairs"] += found.pairs
        summary_counts["positive_pairs"] += found.positive_pairs
        joint_parts.append(found)
    if not joint_parts:
        raise RelearnError("no training image has a usable neighbour in the pool: give a larger --pool")
    filter_cf = np.concatenate(filter_cf)
    filter_labels = np.concatenate(filter_labels)
    summary = {"targets": len(targets), "targets_with_neighbours": len(joint_parts), **summary_counts}
    pair_filter = None
    if config.use_filter:
        try:
            progress(f"pair filter on {len(filter_labels)} pairs ({int(filter_labels.sum())} positive)")
            pair_filter = train_pair_filter(filter_cf, filter_labels, config.filter, device)
        except RelearnError as exc:
            warnings.warn(f"pair filter not trained, every aligned pair is kept: {exc}", stacklevel=2)
    summary["filter"] = pair_filter is not None
    del filter_cf
    relearner = Relearner(base, config, pair_filter, None, joint_parts[0].cf.shape[2], summary)  # type: ignore[arg-type]
    batches, targets_z, groups, superpixel_ids, images = [], [], [], [], []
    for part in joint_parts:
        keep = relearner.keep(part.cf, part.valid, device)
        rows = keep.any(1)
        if rows.any():
            batches.append(PairBatch(part.cf[rows], part.similarity[rows].astype(np.float32), keep[rows],
                                     part.prior[rows]))
            targets_z.append(part.salient_share[rows])
            groups.append(np.full(int(rows.sum()), len(images)))
            superpixel_ids.append(part.superpixels[rows])
            images.append((part.evidence, part.gt))
    if not batches:
        raise RelearnError("no unsure superpixel of the training images has a kept neighbour pair: nothing to re-learn")
    batch = PairBatch.joined(batches)
    groups, superpixel_ids = np.concatenate(groups), np.concatenate(superpixel_ids)
    held_out = split_groups(groups, config.joint.validation_share, config.joint.seed)
    summary["relearned_superpixels"] = len(batch)
    summary["validation_images"] = len(np.unique(groups[held_out]))
    progress(f"joint re-learning on {len(batch)} superpixels")

    held_out_errors = []  # epoch 0 (the base), 1, 2, ...
    held_pairs, held_groups, held_superpixels = batch.take(held_out), groups[held_out], superpixel_ids[held_out]

    def held_out_error(model: JointRelearner) -> float:
        held_out_errors.append(held_out_mae(model, held_pairs, held_groups, held_superpixels, images, device))
        return held_out_errors[-1]

    relearner.joint, history = train_joint(batch, np.concatenate(targets_z), config.joint, device, held_out,
                                           held_out_error)
    summary["classifier_errors"] = history[-1] if history else []
    if held_out_errors:
        epoch = int(np.argmin(held_out_errors))
        summary["held_out_mae"] = {"base": held_out_errors[0], "relearned": held_out_errors[epoch], "epoch": epoch}
    return relearner


def held_out_mae(model: JointRelearner, pairs: PairBatch, groups: np.ndarray, superpixel_ids: np.ndarray,
                 images: list[tuple[ImageEvidence, np.ndarray]], device: str = "cpu") -> float:
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
        saliency = join_with_base(evidence.entry.image, evidence.base_map, evidence.superpixels, relearned,
                                  evidence.pseudo_gt)
        errors.append(np.abs(saliency - gt).mean())
    return float(np.mean(errors))


@dataclass
class WrapOutcome:
    """The Our(X) map of one image, and whether the re-learner changed anything (False: the base map was kept)."""

    entry: ImageEntry
    saliency: np.ndarray
    relearned: bool
    relearned_superpixels: int = 0


def relearn_image(relearner: Relearner, target: ImageEntry, builder: CorrespondenceBuilder, store: EvidenceStore,
                  device: str = "cpu", seconds: dict | None = None) -> WrapOutcome:
    """Our(X) for one image: its base map corrected where the pseudo-GT is unsure and a kept pair supports it."""
    seconds = seconds if seconds is not None else defaultdict(list)
    evidence = store.evidence(target, builder)
    correspondences, neighbours = _with_neighbours(target, builder, store)
    if not neighbours:
        return WrapOutcome(target, evidence.base_map, False)
    start = time.perf_counter()
    pairs = instance_pairs(evidence, neighbours, correspondences, relearner.config.joint.neighbours,
                           relearner.config.alignment)
    keep = relearner.keep(pairs.cf, pairs.valid, device)
    rows = relearn_region(evidence, relearner.config.min_unsure) & keep.any(1)
    scores = np.full(evidence.superpixels.count, np.nan)
    if rows.any():
        batch = PairBatch(pairs.cf[rows], pairs.similarity[rows].astype(np.float32), keep[rows],
                          prior_logit(evidence.base_mean[rows]))
        scores[rows] = predict_joint(relearner.joint, batch, device)
    seconds["relearn"].append(time.perf_counter() - start)
    if not rows.any():
        return WrapOutcome(target, evidence.base_map, False)
    start = time.perf_counter()
    saliency = join_with_base(target.image, evidence.base_map, evidence.superpixels, scores, evidence.pseudo_gt)
    seconds["saliency"].append(time.perf_counter() - start)
    return WrapOutcome(target, saliency, True, int(rows.sum()))


def relearn_images(relearner: Relearner, targets: list[ImageEntry], builder: CorrespondenceBuilder,
                   store: EvidenceStore, device: str = "cpu", seconds: dict | None = None) -> Iterator[WrapOutcome]:
    """Our(X) of each target, in order (``relearn_image`` on several images at once where the device allows, see
    ``side_by_side``)."""
    seconds = seconds if seconds is not None else defaultdict(list)
    yield from side_by_side(lambda target: relearn_image(relearner, target, builder, store, device, seconds), targets,
                            device)


def save_checkpoint(relearner: Relearner, path: str | os.PathLike) -> None:
    """Write the re-learner (weights, configuration, base name, package version) to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "relearn_version": __version__,
        "base": relearner.base,
        "config": relearner.config.to_dict(),
        "pair_features": relearner.pair_features,
        "summary": relearner.summary,
        "filter": None if relearner.pair_filter is None else relearner.pair_filter.state_dict(),
        "joint": relearner.joint.state_dict(),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _compatible(version: str) -> bool:
    """Checkpoints are compatible within one major.minor release of relearn."""
    return version.split(".")[:2] == __version__.split(".")[:2]


def load_checkpoint(path: str | os.PathLike, base: str | None = None, device: str = "cpu") -> Relearner:
    """Read a checkpoint; refuse one trained for another base than ``base`` or by an incompatible relearn version."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise InputError(path, f"not a relearn checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, f"not a relearn checkpoint of format {CHECKPOINT_FORMAT}")
    if base is not None and payload["base"] != base:
        raise InputError(path, f"checkpoint was trained for base {payload['base']!r}, not {base!r}: "
                               f"train one with `relearn train --base {base} ...`")
    if not _compatible(payload["relearn_version"]):
        raise InputError(path, f"checkpoint was written by relearn {payload['relearn_version']}, incompatible with "
                               f"{__version__}: train it again with this version")
    config = RelearnConfig.from_dict(payload["config"])
    pair_filter = None
    if payload["filter"] is not None:
        pair_filter = PairFilter(payload["pair_features"], config.filter)
        pair_filter.load_state_dict(payload["filter"])
        pair_filter.eval()
    joint = JointRelearner(payload["pair_features"], config.joint)
    joint.load_state_dict(payload["joint"])
    joint.eval()
    return Relearner(payload["base"], config, pair_filter, joint, payload["pair_features"], payload["summary"])


def relearn_home() -> Path:
    return Path(os.environ.get("RELEARN_HOME", Path.home() / ".relearn"))


SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def default_checkpoint(base: str) -> Path:
    """The checkpoint used for a base when none is named: the user's, else the one shipped with relearn."""
    for candidate in (relearn_home() / "models" / f"{base}.pt", SHIPPED_CHECKPOINTS / f"{base}.pt"):
        if candidate.is_file():
            return candidate
    raise RelearnError(
        f"no re-learner for base {base!r} in {relearn_home() / 'models'} or shipped with relearn: train one with "
        f"`relearn train --base {base} --images DIR --gt DIR --out {relearn_home() / 'models' / (base + '.pt')}`"
    )


# --------------------------------------------------------------------------------------------------------------
# Folders in, checkpoint or maps out


@dataclass
class RunReport:
    """What a train or wrap run did, for the user: counts, skipped files and failures, seconds by stage."""

    written: list[str] = field(default_factory=list)  #: checkpoint path (train) or image stems (wrap) written
    kept_base: list[str] = field(default_factory=list)  #: written with the base map: no usable neighbour or pair
    already_done: list[str] = field(default_factory=list)
    missing_gt: list[str] = field(default_factory=list)
    base_failures: list[BaseMapFailure] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    pool_size: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  #: total seconds by stage
    relearner: Relearner | None = None  #: the re-learner trained (train)


def read_entries(paths: Iterable[Path], report: RunReport) -> list[ImageEntry]:
    entries = []
    for path in paths:
        try:
            entries.append(read_entry(path))
        except InputError as exc:
            report.unreadable.append((str(path), exc.problem))
    return entries


def image_files(folder: str | os.PathLike) -> list[Path]:
    return list(images_in(folder).values())


def base_maps_for(adapter, entries: list[ImageEntry], options, device, cache: Cache, report: RunReport,
                  seconds: dict) -> dict[str, np.ndarray]:
    """Base maps by content hash; images the base fails on are listed in ``report.base_failures``."""
    maps = {}
    by_path = {e.path: e for e in entries}
    start = time.perf_counter()
    for path, outcome in iter_base_maps(adapter, [e.path for e in entries], options, device, cache):
        if isinstance(outcome, BaseMapFailure):
            report.base_failures.append(outcome)
        else:
            maps[by_path[Path(path)].hash] = outcome.astype(np.float32)
    if entries:
        seconds["base"].extend([(time.perf_counter() - start) / len(entries)] * len(entries))
    return maps


def _unique(entries: Iterable[ImageEntry]) -> list[ImageEntry]:
    seen, out = set(), []
    for entry in entries:
        if entry.hash not in seen:
            seen.add(entry.hash)
            out.append(entry)
    return out


def _stage_totals(*timings: Mapping) -> dict[str, float]:
    """Seconds by stage, from lists of times or from {entry key: seconds} records."""
    totals: dict[str, float] = defaultdict(float)
    for timing in timings:
        for stage, values in timing.items():
            totals[stage] += float(sum(values.values() if isinstance(values, Mapping) else values))
    return dict(totals)


def train(adapter, images_dir, gt_dir, out, pools: Iterable = (), *, options: Mapping | None = None,
          config: RelearnConfig = RelearnConfig(), device: str = "cpu", cache: Cache | None = None,
          progress: Callable[[str], None] = lambda message: None) -> RunReport:
    """``relearn train``: fit a re-learner for ``adapter`` on labelled images and write the checkpoint ``out``.

    The pool is the training images plus every ``pools`` folder; images without ground truth are skipped as targets
    (listed in the report) but still serve in the pool; images the base fails on are left out and listed.
    """
    cache = cache if cache is not None else Cache()
    report = RunReport()
    seconds: dict[str, list[float]] = defaultdict(list)
    options = adapter_options(adapter, options, device)
    masks = list_by_stem(gt_dir)
    entries = read_entries(image_files(images_dir), report)
    pool_entries = _unique(entries + read_entries([p for folder in pools for p in image_files(folder)], report))
    maps = base_maps_for(adapter, pool_entries, options, device, cache, report, seconds)
    targets, ground_truth = [], {}
    for entry in entries:
        if entry.hash not in maps:
            continue
        if entry.name not in masks:
            report.missing_gt.append(entry.name)
            continue
        gt = read_mask(masks[entry.name])
        if gt.shape != entry.image.shape[:2]:
            raise InputError(masks[entry.name], f"mask is {gt.shape[1]}x{gt.shape[0]}, image is "
                                                f"{entry.image.shape[1]}x{entry.image.shape[0]}")
        targets.append(entry)
        ground_truth[entry.hash] = gt
    if not targets:
        raise RelearnError(f"no training image in {images_dir} has both a base map and ground truth in {gt_dir}")
    pool = [e for e in pool_entries if e.hash in maps]
    report.pool_size = len(pool)
    builder = CorrespondenceBuilder(pool, cache, config.correspondence, device)
    store = EvidenceStore(maps, config.backbone, cache, device)
    relearner = fit(adapter.name, targets, ground_truth, builder, store, config, device, progress)
    save_checkpoint(relearner, out)
    report.written.append(str(out))
    report.relearner = relearner
    report.seconds = _stage_totals(seconds, builder.seconds, store.seconds)
    return report


def wrap(adapter, relearner: Relearner, images_dir, out_dir, pools: Iterable = (), *, options: Mapping | None = None,
         device: str = "cpu", cache: Cache | None = None, progress: Callable[[str], None] = lambda message: None) -> RunReport:
    """``relearn wrap``: write Our(X) maps of the images (PNG, same stems) into ``out_dir``.

    Without ``pools`` the other input images are the pool (an image is never its own neighbour). Maps already in
    ``out_dir`` are kept (an interrupted run resumes); images with no usable neighbour keep their base map, and so do
    all images when the re-learner keeps the base (``Relearner.keeps_base``: then nothing beyond the base runs).
    """
    if relearner.base != adapter.name:
        raise RelearnError(f"the re-learner was trained for base {relearner.base!r}, not {adapter.name!r}")
    out_dir = Path(out_dir)
    inputs = [Path(images_dir).resolve()] + [Path(p).resolve() for p in pools]
    if options and options.get("maps"):
        inputs.append(Path(options["maps"]).resolve())
    if out_dir.resolve() in inputs:
        raise InputError(out_dir, "the output folder must not be an input folder")
    cache = cache if cache is not None else Cache()
    report = RunReport()
    seconds: dict[str, list[float]] = defaultdict(list)
    options = adapter_options(adapter, options, device)
    entries = read_entries(image_files(images_dir), report)
    report.already_done = [e.name for e in entries if (out_dir / f"{e.name}.png").exists()]
    todo = [e for e in entries if not (out_dir / f"{e.name}.png").exists()]
    # a re-learner whose held-out training images chose the base changes no map: it needs no pool or correspondence
    relearning = not relearner.keeps_base
    pool_entries = []
    if relearning:
        pool_entries = _unique(read_entries([p for folder in pools for p in image_files(folder)], report)) if pools else entries
    maps = base_maps_for(adapter, _unique(todo + pool_entries), options, device, cache, report, seconds)
    todo = [e for e in todo if e.hash in maps]
    timings: list[Mapping] = [seconds]
    if relearning:
        pool = [e for e in pool_entries if e.hash in maps]
        report.pool_size = len(pool)
        builder = CorrespondenceBuilder(pool, cache, relearner.config.correspondence, device)
        store = EvidenceStore(maps, relearner.config.backbone, cache, device)
        outcomes = relearn_images(relearner, todo, builder, store, device, seconds)
        timings += [builder.seconds, store.seconds]
    else:
        outcomes = (WrapOutcome(entry, maps[entry.hash], False) for entry in todo)
    for number, outcome in enumerate(outcomes, 1):
        entry = outcome.entry
        progress(f"wrap {number}/{len(todo)} {entry.name}")
        write_map(out_dir / f"{entry.name}.png", outcome.saliency)
        report.written.append(entry.name)
        if not outcome.relearned:
            report.kept_base.append(entry.name)
    report.seconds = _stage_totals(*timings)
    return report
