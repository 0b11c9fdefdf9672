"""The re-learning pipeline for one image (paper Fig. 2), read top to bottom.

    base map             the adapter's prediction (base.py), given
    knowledge map        join "fused": the backbone's own saliency map (a saliency network's), over its views
    retrieval            the top-5 pool images by GIST + HOG (correspondence/retrieval.py)
    regions              SLIC superpixels and EdgeBoxes proposals of the target and its neighbours (regions.py)
    flow                 SIFT Flow from the target to each neighbour (flow.py)
    align                the bi-level alignment, Eqs. (1)-(3) (align.py)
    pseudo-GT            two dense CRFs on the base map of the target and its neighbours (relearning/pseudo_gt.py);
                         pool images never use ground truth
    features             backbone features and the base's own verdict of each superpixel, and the instance pairs
                         CF (relearning/features.py)
    pair filter          Table I labels in training, delta of Eq. (6) (pair_filter.py)
    joint                M = 5 classifiers and the joint classifier, Eqs. (6)-(8) (joint.py)
    saliency             re-learned scores back to pixels by spatial weighting, joined with the base map as a logit
                         residual where the pseudo-GT does not trust it (saliency.py)
    --> Our(X) map

A pool image goes through the stages that need no other image (``prepare_image``); a target through all of them
(``relearn_image`` when wrapping, ``training_image`` in training: the same path up to the instance pairs). Every
artefact is cached by the workspace (relearn_core/workspace.py), so a neighbour's regions, pseudo-GT and features are
computed once however many targets retrieve it.

Design choices (why, briefly):
- The re-learner corrects the base, it does not replace it: its logits are residuals over the base's calibrated
  logit (joint.py), the correction is applied per pixel in logit space (saliency.py), so the base's pixel detail stays.
- Only superpixels where the pseudo-GT is unsure (the two CRFs disagree on at least ``min_unsure`` of the pixels) are
  re-learned, in training and at inference: elsewhere the base is trusted and kept exactly. A superpixel whose pairs the
  filter all rejects, and an image with no usable neighbour, keep the base map.
- Nothing is chosen on the images being wrapped: every setting is fixed in the configuration before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .checkpoint import Relearner
from .config import CorrespondenceParams, RelearnConfig
from .correspondence.align import Regions, alignments_for
from .correspondence.flow import flows_for
from .correspondence.regions import proposals_for, resolve_edge_method, superpixels_for
from .correspondence.retrieval import RetrievalIndex, descriptors_for
from .records import (
    ImageEntry,
    ImageEvidence,
    PairCorrespondence,
    PseudoGT,
    TargetPairs,
    TrainingImage,
    WrapOutcome,
)
from .relearning.features import features_for, instance_pairs, knowledge_map_for, lone_pairs, saliency_cues
from .relearning.joint import PairBatch, predict_joint
from .relearning.pair_filter import (
    aligned_iou,
    filter_candidates,
    superpixel_shares,
    table1_labels,
    target_instances,
)
from .relearning.pseudo_gt import pseudo_gt_for
from .relearning.saliency import logit, superpixel_means
from .training import final_map, shrunk
from .workspace import Workspace


@dataclass
class Pool:
    """The images targets retrieve their neighbours from, with their base maps and descriptor index."""

    entries: list[ImageEntry]
    base_maps: dict[str, np.ndarray]  #: by content hash
    index: RetrievalIndex
    #: masks of the pool images that have one (labelled training images), by content hash: with label transfer, a
    #: neighbour lends its mask instead of its pseudo-GT
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)

    def neighbours(self, ws: Workspace, target: ImageEntry, count: int) -> list[tuple[ImageEntry, float]]:
        """Retrieval: the target's ``count`` nearest pool images (never itself or a copy of it), with their descriptor
        distances."""
        descriptor = descriptors_for(ws, [target])[0]
        with ws.timed("search"):
            found = self.index.neighbours(descriptor, count, exclude_hashes=[target.hash])
        return [(self.entries[n.index], n.distance) for n in found]


def prepare_image(ws: Workspace, config: RelearnConfig, item: tuple[ImageEntry, np.ndarray]) -> np.ndarray:
    """The stages of a pool image that need no other image: its retrieval descriptor (returned), superpixels and
    pseudo-GT. (Its proposals and features are computed when a target first retrieves it.)"""
    entry, base_map = item
    descriptor = descriptors_for(ws, [entry])[0]
    superpixels_for(ws, entry, config.correspondence.superpixels)
    pseudo_gt_for(ws, entry, base_map)
    return descriptor


def knowledge_map(ws: Workspace, config: RelearnConfig, entry: ImageEntry, features_needed: bool = False) -> np.ndarray:
    """The backbone's own saliency map of a target (join "fused"); ``features_needed``: the caller needs the target's
    superpixel features too (training, a wrap that corrects), and the map comes from that same network pass."""
    superpixels = superpixels_for(ws, entry, config.correspondence.superpixels) if features_needed else None
    return knowledge_map_for(ws, entry, config.backbone, config.knowledge_views, superpixels)


def image_evidence(
    ws: Workspace, entry: ImageEntry, base_map: np.ndarray, config: RelearnConfig, gt: np.ndarray | None = None
) -> ImageEvidence:
    """Regions, pseudo-GT and features of one image given its base map: what the re-learner knows about it. With a
    mask ``gt`` (label transfer from a labelled neighbour), the mask takes the place of the pseudo-GT."""
    regions = superpixels_for(ws, entry, config.correspondence.superpixels)
    pgt = pseudo_gt_for(ws, entry, base_map) if gt is None else PseudoGT(gt, ~gt)
    features = features_for(ws, entry, regions, config.backbone).values
    salient = superpixel_shares(regions.labels, pgt.salient, regions.count)
    background = superpixel_shares(regions.labels, pgt.background, regions.count)
    base_mean = superpixel_means(base_map, regions)
    descriptor = np.concatenate([features, saliency_cues(base_mean, salient, background, regions)], 1)
    return ImageEvidence(entry, base_map, regions, pgt, descriptor.astype(np.float32), salient, background, base_mean)


def _regions(ws: Workspace, entry: ImageEntry, params: CorrespondenceParams) -> Regions:
    return Regions(
        superpixels_for(ws, entry, params.superpixels),
        proposals_for(ws, entry, params.proposals, params.edge_boxes, params.edge_method),
    )


def correspondences(
    ws: Workspace, target: ImageEntry, pool: Pool, params: CorrespondenceParams
) -> list[PairCorrespondence]:
    """Retrieval, regions, SIFT Flow and the bi-level alignment of a target against its neighbours in the pool."""
    found = pool.neighbours(ws, target, params.neighbours)
    if not found:
        return []
    neighbours = [entry for entry, _ in found]
    target_regions = _regions(ws, target, params)
    neighbour_regions = [_regions(ws, entry, params) for entry in neighbours]
    flows = flows_for(ws, target, neighbours, params.flow, params.flow_grid)
    region_key = {
        "superpixels": params.superpixels,
        "proposals": params.proposals,
        "edges": resolve_edge_method(params.edge_method),
    }
    alignments = alignments_for(
        ws,
        target,
        target_regions,
        neighbours,
        neighbour_regions,
        flows,
        params.align,
        params.flow,
        params.flow_grid,
        region_key,
    )
    return [
        PairCorrespondence(target, entry, distance, alignment)
        for (entry, distance), alignment in zip(found, alignments)
    ]


def target_pairs(
    ws: Workspace, target: ImageEntry, base_map: np.ndarray, pool: Pool, config: RelearnConfig
) -> TargetPairs | None:
    """Fig. 2 up to the instance pairs for one target; None when the pool gives it no neighbour. With alignment
    "none" the target's superpixels are paired with no neighbour (the ablation without correspondence)."""
    if config.alignment == "none":
        return lone_pairs(image_evidence(ws, target, base_map, config), config.joint.neighbours)
    found = correspondences(ws, target, pool, config.correspondence)
    if not found:
        return None
    evidence = image_evidence(ws, target, base_map, config)
    lent = pool.ground_truth if config.label_transfer else {}
    neighbours = [
        image_evidence(ws, pair.neighbour, pool.base_maps[pair.neighbour.hash], config, lent.get(pair.neighbour.hash))
        for pair in found
    ]
    return instance_pairs(evidence, neighbours, found, config.joint.neighbours, config.alignment)


def prior_logit(start_map: np.ndarray, evidence: ImageEvidence) -> np.ndarray:
    """The re-learner's prior for each superpixel: the logit of the mean of the map it corrects there."""
    return logit(superpixel_means(start_map, evidence.superpixels)).astype(np.float32)


def relearned_rows(pairs: TargetPairs, keep: np.ndarray, config: RelearnConfig) -> np.ndarray:
    """bool (S,): the superpixels the re-learner corrects: those with a kept pair (join "paper": and unsure)."""
    rows = keep.any(1)
    return rows & pairs.evidence.relearned(config.min_unsure) if config.join == "paper" else rows


def relearn_image(
    ws: Workspace, relearner: Relearner, pool: Pool, target: tuple[ImageEntry, np.ndarray, np.ndarray]
) -> WrapOutcome:
    """Our(X) for one image: the start map (the base, or the base fused with the backbone's saliency) corrected where
    a kept pair supports the re-learner (join "paper": only where the pseudo-GT is unsure)."""
    entry, base_map, start_map = target
    config = relearner.config
    pairs = target_pairs(ws, entry, base_map, pool, config)
    if pairs is None:
        return WrapOutcome(entry, start_map, False)
    evidence = pairs.evidence
    with ws.timed("relearn"):
        keep = relearner.keep(pairs.cf, pairs.valid, ws.device)
        rows = relearned_rows(pairs, keep, config)
        scores = np.full(evidence.superpixels.count, np.nan)
        if rows.any():
            prior = prior_logit(start_map, evidence)[rows]
            batch = PairBatch(pairs.cf[rows], pairs.similarity[rows].astype(np.float32), keep[rows], prior)
            scores[rows] = shrunk(predict_joint(relearner.joint, batch, ws.device), prior, relearner.shrink)
    if not rows.any():
        return WrapOutcome(entry, start_map, False)
    with ws.timed("saliency"):
        saliency = final_map(evidence, start_map, scores, config)
    return WrapOutcome(entry, saliency, True, int(rows.sum()))


def training_image(
    ws: Workspace,
    config: RelearnConfig,
    pool: Pool,
    negative_cap: int,
    target: tuple[int, ImageEntry, np.ndarray, np.ndarray, np.ndarray],
) -> TrainingImage | None:
    """What training image number ``number`` gives the pair filter and the joint re-learner (None: no neighbour)."""
    number, entry, base_map, start_map, gt = target
    pairs = target_pairs(ws, entry, base_map, pool, config)
    if pairs is None:
        return None
    evidence = pairs.evidence
    facts = target_instances(evidence.superpixels.labels, gt, evidence.pseudo_gt.salient, evidence.pseudo_gt.background)
    pair_iou = aligned_iou(
        facts.gt_class[:, None],
        facts.class_share[:, None],
        pairs.aligned_share("trusted_salient"),
        pairs.aligned_share("trusted_background"),
    )
    labels = table1_labels(facts.pgt_iou, pair_iou)[pairs.valid]
    chosen = filter_candidates(labels, negative_cap, config.filter.seed + number)
    # only the re-learned superpixels' pairs are kept: all pairs of every image do not fit in memory with VGG features
    region = relearned_rows(pairs, pairs.valid, config)
    return TrainingImage(
        pairs.cf[pairs.valid][chosen],
        labels[chosen],
        len(labels),
        int(labels.sum()),
        pairs.cf[region],
        pairs.similarity[region],
        pairs.valid[region],
        prior_logit(start_map, evidence)[region],
        facts.salient_share[region],
        np.flatnonzero(region),
        evidence,
        start_map,
        gt,
    )
