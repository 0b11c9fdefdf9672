"""Joint saliency re-learning (paper Section IV-C, Eqs. (6)-(8)).

Each target superpixel has up to M = 5 aligned instances, one per retrieved neighbour, ordered by trust (the
alignment similarity g, highest first). Classifier m (FC5 layers, then a binary classifier) sees the pair feature of
the m-th most trusted instance; the joint classifier sees the filtered, similarity-weighted sum of the classifiers'
last FC5 outputs:

    L_joint = sigma(Z, h(sum_m delta_m g_m w_m))                       (6)
    L_final = L_joint + sum_m alpha_m L_m                               (7)
    alpha_m = 1/2 log((1 - e_m) / e_m)                                  (8)

with delta_m in {0, 1} the pair filter's decision, g_m the similarity, w_m classifier m's last FC5 output, h the
sigmoid, sigma the binary cross-entropy and e_m the training error of classifier m, recomputed at the start of every
epoch and clamped to ``error_clamp`` so alpha_m stays positive and finite.

One addition to the paper, for a re-learner that wraps an existing model: every logit is a residual over the base
model's own calibrated logit for the superpixel, ``a * prior + b`` (a, b learned). A superpixel whose pairs the filter
all rejects therefore keeps (a calibration of) the base's decision instead of a constant, and the classifiers learn
corrections to the base rather than re-learning it from scratch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import RelearnError
from .pair_filter import Standardise, fc_stack

NEIGHBOURS = 5  #: M of the paper
BETA2 = 0.3  #: beta^2 of the F-measure, as the field scores it


@dataclass(frozen=True)
class JointConfig:
    neighbours: int = NEIGHBOURS
    hidden: tuple[int, ...] = (128, 32)
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    error_clamp: tuple[float, float] = (0.02, 0.48)
    #: share of training images held out to choose the epoch (0: train on all, keep the last)
    validation_share: float = 0.2
    #: the joint classifier's loss against the ground-truth share Z: "bce" (the paper's sigma of Eq. (6)), "l1" (the
    #: absolute error, MAE's own measure: it keeps the re-learned scores decisive where BCE leaves them soft) or
    #: "f-mae" (one minus the soft F-measure of the batch plus its MAE, both weighted by the superpixels' pixels: the
    #: two figures the maps are judged by, made differentiable)
    loss: str = "bce"
    seed: int = 0


@dataclass
class PairBatch:
    """The instance pairs of N target superpixels, M per target in descending trust order.

    cf: (N, M, D) float32 pair features; similarity: (N, M) g in [0, 1]; keep: (N, M) bool, delta of Eq. (6) (the
    filter's decision, False for a missing neighbour); prior: (N,) the base model's logit for each target.
    """

    cf: np.ndarray
    similarity: np.ndarray
    keep: np.ndarray
    prior: np.ndarray

    def __post_init__(self):
        n, m = self.keep.shape
        if self.cf.shape[:2] != (n, m) or self.similarity.shape != (n, m) or self.prior.shape != (n,):
            raise RelearnError(
                f"pair batch shapes disagree: cf {self.cf.shape}, similarity {self.similarity.shape}, "
                f"keep {self.keep.shape}, prior {self.prior.shape}"
            )

    def __len__(self) -> int:
        return len(self.prior)

    def take(self, rows) -> PairBatch:
        """The batch of these rows (a bool mask, indices or a slice)."""
        return PairBatch(self.cf[rows], self.similarity[rows], self.keep[rows], self.prior[rows])

    @staticmethod
    def joined(batches: list[PairBatch]) -> PairBatch:
        """One batch of the rows of ``batches``, in order."""
        columns = zip(*((b.cf, b.similarity, b.keep, b.prior) for b in batches))
        return PairBatch(*(np.concatenate(column) for column in columns))

    def tensors(self, device) -> tuple[torch.Tensor, ...]:
        return (
            torch.as_tensor(self.cf, dtype=torch.float32, device=device),
            torch.as_tensor(self.similarity, dtype=torch.float32, device=device),
            torch.as_tensor(self.keep, dtype=torch.float32, device=device),
            torch.as_tensor(self.prior, dtype=torch.float32, device=device),
        )


class JointRelearner(nn.Module):
    """M classifiers over the pair features and the joint classifier of Eq. (6)."""

    def __init__(self, pair_features: int, config: JointConfig = JointConfig()):
        super().__init__()
        self.config = config
        self.standardise = Standardise(pair_features)
        self.fc5 = nn.ModuleList(
            fc_stack(pair_features, config.hidden, config.dropout) for _ in range(config.neighbours)
        )
        self.classifiers = nn.ModuleList(nn.Linear(config.hidden[-1], 1) for _ in range(config.neighbours))
        self.joint_classifier = nn.Linear(config.hidden[-1], 1)
        # the residual starts at zero: before training, the joint prediction is the base's own logit
        nn.init.zeros_(self.joint_classifier.weight)
        nn.init.zeros_(self.joint_classifier.bias)
        self.prior_scale = nn.Parameter(torch.ones(()))
        self.prior_bias = nn.Parameter(torch.zeros(()))

    def forward(self, cf, similarity, keep, prior) -> tuple[torch.Tensor, torch.Tensor]:
        """Joint logits (N,) and the M classifiers' logits (N, M)."""
        x = self.standardise(cf)
        w = torch.stack([layers(x[:, m]) for m, layers in enumerate(self.fc5)], 1)  # (N, M, H)
        offset = self.prior_scale * prior + self.prior_bias
        branch = torch.cat([head(w[:, m]) for m, head in enumerate(self.classifiers)], 1) + offset[:, None]
        fused = (keep * similarity).unsqueeze(-1).mul(w).sum(1)
        joint = self.joint_classifier(fused).squeeze(-1) * keep.amax(1) + offset
        return joint, branch


def boosting_weights(errors: torch.Tensor, clamp: tuple[float, float]) -> torch.Tensor:
    """alpha_m of Eq. (8) from the classifiers' error rates, clamped to keep it positive and finite."""
    e = errors.clamp(*clamp)
    return 0.5 * torch.log((1 - e) / e)


@torch.no_grad()
def classifier_errors(model: JointRelearner, batch: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    """e_m: the error rate of each classifier on the pairs it is trained on (kept pairs), 0.5 where it has none."""
    model.eval()
    _, branch = model(*batch)
    keep = batch[2]
    wrong = ((branch > 0) != (target[:, None] >= 0.5)).float() * keep
    counts = keep.sum(0)
    return torch.where(counts > 0, wrong.sum(0) / counts.clamp_min(1), torch.full_like(counts, 0.5))


def soft_f_measure(probability: torch.Tensor, target: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """The F-measure (beta^2 = 0.3, the field's) of soft predictions against soft targets, each superpixel counted by
    its pixels: precision sum(p z) / sum(p), recall sum(p z) / sum(z), all weighted by ``pixels``."""
    hit = (pixels * probability * target).sum()
    precision = hit / (pixels * probability).sum().clamp_min(1e-8)
    recall = hit / (pixels * target).sum().clamp_min(1e-8)
    return (1 + BETA2) * precision * recall / (BETA2 * precision + recall).clamp_min(1e-8)


def final_loss(joint, branch, keep, target, alpha, joint_loss: str = "bce", pixels=None) -> torch.Tensor:
    """Eq. (7): the joint loss plus the alpha-weighted classifier losses, each over its kept pairs; ``pixels`` (N,):
    each target superpixel's pixel count, which "f-mae" weighs by (None: all alike)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    if joint_loss == "l1":
        loss = (torch.sigmoid(joint) - target).abs().mean()
    elif joint_loss == "bce":
        loss = bce(joint, target)
    elif joint_loss == "f-mae":
        pixels = torch.ones_like(target) if pixels is None else pixels
        probability = torch.sigmoid(joint)
        mae = (pixels * (probability - target).abs()).sum() / pixels.sum().clamp_min(1e-8)
        loss = 1 - soft_f_measure(probability, target, pixels) + mae
    else:
        raise RelearnError(f"unknown joint loss {joint_loss!r}: expected 'bce', 'l1' or 'f-mae'")
    per_pair = bce(branch, target[:, None].expand_as(branch), reduction="none") * keep
    return loss + (alpha * per_pair.sum(0) / keep.sum(0).clamp_min(1)).sum()


def split_groups(groups: np.ndarray, share: float, seed: int) -> np.ndarray:
    """bool (N,): rows whose group (training image) is held out for validation, about ``share`` of the groups."""
    names = np.unique(groups)
    count = int(round(share * len(names)))
    if share <= 0 or count < 1 or count >= len(names):
        return np.zeros(len(groups), bool)
    held = np.random.RandomState(seed).choice(names, count, replace=False)
    return np.isin(groups, held)


def train_joint(
    pairs: PairBatch,
    target: np.ndarray,
    config: JointConfig = JointConfig(),
    device: str = "cpu",
    held_out: np.ndarray | None = None,
    held_out_error: Callable[[JointRelearner], float] | None = None,
    pixels: np.ndarray | None = None,
) -> tuple[JointRelearner, list[list[float]]]:
    """Train the M classifiers and the joint classifier on ``pairs`` with saliency targets Z (N,) in [0, 1]; ``pixels``
    (N,): each target superpixel's pixel count, for the "f-mae" loss (None: all alike).

    With ``held_out`` (bool (N,): the rows of the training images kept for validation, see ``split_groups``), the
    model trains on the other rows, and the epoch with the lowest ``held_out_error(model)`` is kept, epoch 0 (the
    untrained residual: the base itself) included: the training images alone decide how far, if at all, the
    re-learner moves the base. Returns the model and, per epoch, the classifiers' errors e_m used for alpha_m.
    """
    if held_out is not None and held_out.any() and held_out_error is None:
        raise RelearnError("train_joint: rows are held out but no held_out_error tells how to score them")
    if pairs.keep.shape[1] != config.neighbours:
        raise RelearnError(
            f"the joint model has M={config.neighbours} classifiers but the pairs hold {pairs.keep.shape[1]} per target"
        )
    if len(pairs) == 0:
        raise RelearnError("no target instances to re-learn from (no unsure superpixel with a kept neighbour pair)")
    torch.manual_seed(config.seed)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    validating = held_out is not None and bool(held_out.any())
    pixels = np.ones(len(pairs), np.float32) if pixels is None else np.asarray(pixels, np.float32)
    if validating:
        pairs, target, pixels = pairs.take(~held_out), np.asarray(target)[~held_out], pixels[~held_out]
    tensors = pairs.tensors(device)
    z = torch.as_tensor(target, dtype=torch.float32, device=device)
    area = torch.as_tensor(pixels, dtype=torch.float32, device=device)
    model = JointRelearner(pairs.cf.shape[2], config).to(device)
    kept_pairs = tensors[0][tensors[2] > 0]
    model.standardise.fit(kept_pairs if len(kept_pairs) > 1 else tensors[0].reshape(-1, tensors[0].shape[-1]))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    history = []
    best = (held_out_error(model.eval()), copy.deepcopy(model.state_dict())) if validating else None
    for _ in range(config.epochs):
        errors = classifier_errors(model, tensors, z)
        history.append(errors.tolist())
        alpha = boosting_weights(errors, config.error_clamp)
        model.train()
        order = torch.randperm(len(z), generator=generator).to(device)
        for start in range(0, len(z), config.batch_size):
            rows = order[start : start + config.batch_size]
            optimiser.zero_grad()
            batch = [t[rows] for t in tensors]
            joint, branch = model(*batch)
            final_loss(joint, branch, batch[2], z[rows], alpha, config.loss, area[rows]).backward()
            optimiser.step()
        if validating:
            error = held_out_error(model.eval())
            if error < best[0]:
                best = (error, copy.deepcopy(model.state_dict()))
    if validating:
        model.load_state_dict(best[1])
    model.eval()
    return model, history


@torch.no_grad()
def predict_joint(model: JointRelearner, pairs: PairBatch, device: str = "cpu", batch_size: int = 65536) -> np.ndarray:
    """Re-learned saliency probability (N,) of each target superpixel (the joint classifier's sigmoid)."""
    model.eval().to(device)
    out = []
    for start in range(0, len(pairs), batch_size):
        joint, _ = model(*pairs.take(slice(start, start + batch_size)).tensors(device))
        out.append(torch.sigmoid(joint).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
