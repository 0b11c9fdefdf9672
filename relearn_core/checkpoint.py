"""A trained re-learner, and its checkpoint file: weights, configuration, base name, relearn version."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import RelearnConfig
from .errors import InputError, RelearnError
from .imageio import atomic_write_bytes
from .relearning.joint import JointRelearner
from .relearning.pair_filter import PairFilter, filter_decisions

CHECKPOINT_FORMAT = 2
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass
class Relearner:
    """A trained re-learner for one base model."""

    base: str
    config: RelearnConfig
    pair_filter: PairFilter | None  #: None when disabled or when the data gave too few positive pairs
    joint: JointRelearner
    pair_features: int
    summary: dict = field(default_factory=dict)  #: counts from training (images, pairs, positives, ...)
    #: the adapter whose maps are the backbone's own saliency, fused with the base's (join "fused"); "" for none
    knowledge: str = ""
    #: (a, b, c) of the fused map sigmoid(a logit(base) + b logit(knowledge) + c), learned on the training images;
    #: (1, 0, 0) is the base itself
    fusion: tuple[float, float, float] = (1.0, 0.0, 0.0)
    shrink: float = 1.0  #: the share of the correction's logit applied, chosen on held-out training images

    @property
    def corrects(self) -> bool:
        """False when training chose epoch 0: no epoch made the held-out training images' maps better than the map
        before correction (the base, or the fused map), which is then written as it is, without correspondences."""
        return self.summary.get("held_out", {}).get("epoch") != 0

    @property
    def keeps_base(self) -> bool:
        """True when the re-learner writes every map as the base made it: no correction, no fusion."""
        return not self.corrects and self.fusion == (1.0, 0.0, 0.0)

    def keep(self, cf: np.ndarray, valid: np.ndarray, device: str) -> np.ndarray:
        """delta of Eq. (6) for every pair (N, M) of pair features ``cf``: the filter's decision on valid pairs."""
        if self.pair_filter is None:
            return valid
        keep = np.zeros_like(valid)
        keep[valid] = filter_decisions(self.pair_filter, cf[valid], device)
        return keep


def save_checkpoint(relearner: Relearner, path: str | os.PathLike) -> None:
    """Write the re-learner (weights, configuration, base name, package version) to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "relearn_version": __version__,
        "base": relearner.base,
        "config": relearner.config.to_dict(),
        "pair_features": relearner.pair_features,
        "summary": relearner.summary,
        "knowledge": relearner.knowledge,
        "fusion": list(relearner.fusion),
        "shrink": relearner.shrink,
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
        raise InputError(
            path, f"not a relearn checkpoint of format {CHECKPOINT_FORMAT}: train it again with relearn {__version__}"
        )
    if base is not None and payload["base"] != base:
        raise InputError(
            path,
            f"checkpoint was trained for base {payload['base']!r}, not {base!r}: "
            f"train one with `relearn train --base {base} ...`",
        )
    if not _compatible(payload["relearn_version"]):
        raise InputError(
            path,
            f"checkpoint was written by relearn {payload['relearn_version']}, incompatible with "
            f"{__version__}: train it again with this version",
        )
    config = RelearnConfig.from_dict(payload["config"])
    pair_filter = None
    if payload["filter"] is not None:
        pair_filter = PairFilter(payload["pair_features"], config.filter)
        pair_filter.load_state_dict(payload["filter"])
        pair_filter.eval()
    joint = JointRelearner(payload["pair_features"], config.joint)
    joint.load_state_dict(payload["joint"])
    joint.eval()
    return Relearner(
        payload["base"],
        config,
        pair_filter,
        joint,
        payload["pair_features"],
        payload["summary"],
        payload["knowledge"],
        tuple(payload["fusion"]),
        payload["shrink"],
    )


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a relearn checkpoint of any format (a file that train may replace)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a JPEG, a text file, a damaged archive: not one of ours
        return False
    return isinstance(payload, dict) and "format" in payload and "relearn_version" in payload


def relearn_home() -> Path:
    return Path(os.environ.get("RELEARN_HOME", Path.home() / ".relearn"))


def default_checkpoint(base: str) -> Path:
    """The checkpoint used for a base when none is named: the user's, else the one shipped with relearn."""
    for candidate in (relearn_home() / "models" / f"{base}.pt", SHIPPED_CHECKPOINTS / f"{base}.pt"):
        if candidate.is_file():
            return candidate
    raise RelearnError(
        f"no re-learner for base {base!r} in {relearn_home() / 'models'} or shipped with relearn: train one with "
        f"`relearn train --base {base} --images DIR --gt DIR --out {relearn_home() / 'models' / (base + '.pt')}`"
    )
