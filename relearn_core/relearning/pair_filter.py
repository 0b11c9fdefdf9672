"""Semi-supervised instance-pair filter (paper Section IV-B, Table I).

An *instance pair* joins a target superpixel of a labelled image with the superpixel that the bi-level alignment
matched to it in one of the image's retrieved neighbours. Its feature CF is the target's feature followed by the
aligned superpixel's (``{xi_i, xi_j}`` in the paper). The filter (the fully connected "FC5" layers and a binary
classifier) learns which pairs are worth re-learning from: a *hard* target whose aligned instance already carries the
right saliency.

What "instance" and IoU mean here, at superpixel level (the paper leaves it implicit):

- A target instance is one superpixel of a labelled image. Its ground-truth class ``c`` is the majority class of
  the ground truth inside it (salient when at least half its pixels are salient).
- ``IoU(pGT, GT)`` of the target is the pixel IoU, inside the superpixel, of the pixels GT gives class ``c`` and the
  pixels the bi-level pseudo-GT *trusts* as class ``c``. Unsure pseudo-GT pixels belong to neither, so a superpixel
  the base model gets wrong, or that the two CRFs disagree on, scores low: IoU <= T1 marks a hard target.
- ``IoU(GT of the target, pGT of the aligned instance)``: the aligned superpixel lies in another image, matched to the
  target as a whole (Q_M of Eq. (1)), not pixel by pixel. We compare the two as sets of relative area: the target's
  share ``r`` of pixels of class ``c`` under GT and the aligned superpixel's share ``q`` of pixels its pseudo-GT trusts
  as class ``c``; with the two superpixels registered onto each other their best overlap is ``min(r, q) / max(r, q)``.
  IoU > T2 marks an aligned instance of the same saliency. Pool images never use ground truth.

A pair is labelled 1 when both hold, else 0. Training samples positives and negatives at the paper's ratio
(30k : 50k, scaled down to what the data holds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import RelearnError

T1 = 0.15  #: IoU(pGT, GT) at or below which a target instance is hard
T2 = 0.90  #: IoU(GT target, pGT aligned) above which the aligned instance has the same saliency
PAPER_POSITIVES = 30_000
PAPER_NEGATIVES = 50_000


def superpixel_shares(labels: np.ndarray, mask: np.ndarray, count: int) -> np.ndarray:
    """For each superpixel id in ``[0, count)``: the share of its pixels where ``mask`` holds (0 for empty ids)."""
    sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
    inside = np.bincount(labels.ravel(), weights=mask.ravel().astype(np.float64), minlength=count)
    return inside / np.maximum(sizes, 1.0)


@dataclass(frozen=True)
class InstanceLabels:
    """Per-superpixel ground-truth facts of one labelled target image, used by Table I and by the re-learner."""

    salient_share: np.ndarray  #: (S,) share of GT-salient pixels
    gt_class: np.ndarray  #: (S,) bool, the majority GT class (True = salient)
    class_share: np.ndarray  #: (S,) share of pixels of ``gt_class`` under GT (>= 0.5)
    pgt_iou: np.ndarray  #: (S,) IoU(pGT, GT) of the instance as defined in the module docstring


def target_instances(
    labels: np.ndarray, gt: np.ndarray, pgt_salient: np.ndarray, pgt_background: np.ndarray
) -> InstanceLabels:
    """Ground-truth class and IoU(pGT, GT) of every superpixel of a labelled image (``labels`` (H, W) ids from 0)."""
    if not (labels.shape == gt.shape == pgt_salient.shape == pgt_background.shape):
        raise RelearnError(
            f"superpixels {labels.shape}, GT {gt.shape} and pseudo-GT {pgt_salient.shape} differ in shape"
        )
    count = int(labels.max()) + 1
    flat = labels.ravel()
    gt = gt.ravel().astype(bool)
    salient_share = superpixel_shares(flat, gt, count)
    gt_class = salient_share >= 0.5
    in_class = np.where(gt_class[flat], gt, ~gt)  # pixels GT gives the superpixel's class
    trusted_class = np.where(gt_class[flat], pgt_salient.ravel(), pgt_background.ravel())
    intersection = np.bincount(flat, weights=(in_class & trusted_class).astype(np.float64), minlength=count)
    union = np.bincount(flat, weights=(in_class | trusted_class).astype(np.float64), minlength=count)
    pgt_iou = np.where(union > 0, intersection / np.maximum(union, 1.0), 1.0)
    class_share = np.where(gt_class, salient_share, 1.0 - salient_share)
    return InstanceLabels(salient_share, gt_class, class_share, pgt_iou)


def aligned_iou(
    target_class: np.ndarray,
    target_class_share: np.ndarray,
    aligned_trusted_salient: np.ndarray,
    aligned_trusted_background: np.ndarray,
) -> np.ndarray:
    """IoU(GT of the target, pGT of the aligned instance), elementwise over pairs (see the module docstring).

    ``aligned_trusted_*`` are the aligned superpixels' shares of pseudo-GT trusted salient / background pixels.
    """
    aligned_share = np.where(target_class, aligned_trusted_salient, aligned_trusted_background)
    high = np.maximum(target_class_share, aligned_share)
    return np.where(high > 0, np.minimum(target_class_share, aligned_share) / np.maximum(high, 1e-12), 0.0)


def table1_labels(pgt_iou: np.ndarray, pair_iou: np.ndarray, t1: float = T1, t2: float = T2) -> np.ndarray:
    """Table I: 1 for a hard target (IoU(pGT, GT) <= t1) whose aligned instance has its saliency (IoU > t2).

    ``pgt_iou`` (N,) per target, ``pair_iou`` (N, M) per pair; returns bool (N, M).
    """
    return (np.asarray(pgt_iou)[:, None] <= t1) & (np.asarray(pair_iou) > t2)


def filter_candidates(labels: np.ndarray, negative_cap: int, seed: int) -> np.ndarray:
    """Indices of every positive pair and of at most ``negative_cap`` random negative pairs of one training image:
    negatives are plentiful, and keeping a share per image keeps the filter's training set small with wide features."""
    rng = np.random.RandomState(seed)
    positive = np.flatnonzero(labels)
    negative = np.flatnonzero(~labels)
    if len(negative) > negative_cap:
        negative = rng.choice(negative, negative_cap, replace=False)
    return np.sort(np.concatenate([positive, negative]))


def balanced_sample(
    labels: np.ndarray, seed: int, positives: int = PAPER_POSITIVES, negatives: int = PAPER_NEGATIVES
) -> np.ndarray:
    """Indices of a random sample with at most ``positives`` positives and negatives in the paper's 30 : 50 ratio.

    When the data holds fewer positives than asked, the number of negatives shrinks with them (scaled to the data);
    when it holds fewer negatives, all of them are taken.
    """
    labels = np.asarray(labels, dtype=bool).ravel()
    rng = np.random.RandomState(seed)
    positive = np.flatnonzero(labels)
    negative = np.flatnonzero(~labels)
    take_pos = min(len(positive), positives)
    take_neg = min(len(negative), negatives, max(1, round(take_pos * negatives / positives)))
    chosen = np.concatenate(
        [rng.choice(positive, take_pos, replace=False), rng.choice(negative, take_neg, replace=False)]
    )
    return np.sort(chosen)


def fc_stack(in_features: int, hidden: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Fully connected layers with ReLU (the paper's "FC5" block); the output width is ``hidden[-1]``."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    return nn.Sequential(*layers)


class Standardise(nn.Module):
    """Feature-wise (x - mean) / std with statistics fixed from the training data, stored with the weights."""

    def __init__(self, features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def fit(self, x: torch.Tensor) -> Standardise:
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class FilterConfig:
    hidden: tuple[int, ...] = (256, 64)
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    positives: int = PAPER_POSITIVES
    negatives: int = PAPER_NEGATIVES
    min_positives: int = 20  #: fewer positive pairs than this and the filter cannot be trained
    threshold: float = 0.5  #: delta = 1 where the filter's probability exceeds it
    seed: int = 0


class PairFilter(nn.Module):
    """FC5 layers and a binary classifier over the pair feature CF: the logit that a pair is worth re-learning from."""

    def __init__(self, in_features: int, config: FilterConfig = FilterConfig()):
        super().__init__()
        self.config = config
        self.standardise = Standardise(in_features)
        self.fc5 = fc_stack(in_features, config.hidden, config.dropout)
        self.classifier = nn.Linear(config.hidden[-1], 1)

    def forward(self, cf: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc5(self.standardise(cf))).squeeze(-1)


def fit_binary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> None:
    """Minibatch Adam on binary cross-entropy of ``model(x)`` (logits) against ``y`` (targets in [0, 1])."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            optimiser.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()


def train_pair_filter(
    cf: np.ndarray, labels: np.ndarray, config: FilterConfig = FilterConfig(), device: str = "cpu"
) -> PairFilter:
    """Train the filter on pair features ``cf`` (P, D) and Table I labels (P,), with the paper's balanced sampling."""
    cf = np.asarray(cf, dtype=np.float32)
    labels = np.asarray(labels, dtype=bool)
    if cf.ndim != 2 or len(cf) != len(labels):
        raise RelearnError(f"pair features of shape {cf.shape} do not match {labels.shape} labels")
    if labels.sum() < config.min_positives or (~labels).sum() < config.min_positives:
        raise RelearnError(
            f"the pair filter needs at least {config.min_positives} positive and negative pairs; "
            f"the training data gave {int(labels.sum())} positive and {int((~labels).sum())} negative"
        )
    torch.manual_seed(config.seed)
    chosen = balanced_sample(labels, config.seed, config.positives, config.negatives)
    x = torch.from_numpy(cf[chosen]).to(device)
    y = torch.from_numpy(labels[chosen].astype(np.float32)).to(device)
    model = PairFilter(cf.shape[1], config).to(device)
    model.standardise.fit(x)
    fit_binary(
        model,
        x,
        y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
    )
    return model


@torch.no_grad()
def filter_probability(model: PairFilter, cf: np.ndarray, device: str = "cpu", batch_size: int = 65536) -> np.ndarray:
    """The filter's probability (P,) that each pair is valuable."""
    model.eval().to(device)
    cf = torch.from_numpy(np.asarray(cf, dtype=np.float32))
    out = [torch.sigmoid(model(cf[s : s + batch_size].to(device))).cpu() for s in range(0, len(cf), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def filter_decisions(model: PairFilter, cf: np.ndarray, device: str = "cpu") -> np.ndarray:
    """delta of Eq. (6): bool (P,), True for the pairs the filter keeps."""
    return filter_probability(model, cf, device) > model.config.threshold
