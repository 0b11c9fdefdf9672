"""The records that pass between the stages (the ground floor: every stage module reads and writes these).

A record that a stage caches on disk has ``to_arrays()`` and ``from_arrays(arrays)``: the arrays are what the cache
entry holds (relearn_core/workspace.py), and a record read back equals the record computed (the workspace returns
``from_arrays(to_arrays(result))`` either way).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import InputError
from .imageio import content_hash, read_image

MIN_SIDE = 32  #: the smallest image side the correspondence stages work with (one SIFT descriptor's support)


@dataclass(frozen=True)
class ImageEntry:
    """An input image: name (file stem), path, content hash. Its pixels (RGB uint8) are read when first used and are
    not pickled: a worker on another machine reads them from ``path`` (so the path must be reachable there)."""

    name: str
    path: Path
    hash: str

    @cached_property
    def image(self) -> np.ndarray:
        return read_image(self.path)

    def __getstate__(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "image"}


def read_entry(path: str | os.PathLike) -> ImageEntry:
    """An input image of the pipeline (its pixels read, checked and kept, its content hashed). Raises InputError
    naming the file when it cannot be read or is smaller than ``MIN_SIDE`` px a side."""
    path = Path(path)
    image = read_image(path)
    if min(image.shape[:2]) < MIN_SIDE:
        raise InputError(path, f"image is {image.shape[1]}x{image.shape[0]} px; needs at least {MIN_SIDE} px a side")
    entry = ImageEntry(path.stem, path, content_hash(path))
    entry.__dict__["image"] = image  # read once: the entry's lazy pixels are these
    return entry


@dataclass(frozen=True)
class BaseMap:
    """A base model's saliency map of one image: float32 (H, W) in [0, 1]."""

    map: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"map": self.map}

    @classmethod
    def from_arrays(cls, arrays) -> BaseMap:
        return cls(arrays["map"].astype(np.float32, copy=False))


@dataclass(frozen=True)
class Descriptor:
    """The GIST + HOG retrieval descriptor of one image (D,) float32, unit length."""

    descriptor: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"descriptor": self.descriptor}

    @classmethod
    def from_arrays(cls, arrays) -> Descriptor:
        return cls(arrays["descriptor"])


@dataclass(frozen=True)
class Superpixels:
    """SLIC labels 0..count-1 of every pixel of the image (int32, (H, W))."""

    labels: np.ndarray
    count: int

    def centroids(self) -> np.ndarray:
        """(count, 2) mean (x, y) of each superpixel's pixels."""
        height, width = self.labels.shape
        flat = self.labels.ravel()
        sizes = np.bincount(flat, minlength=self.count).astype(np.float64)
        ys, xs = np.divmod(np.arange(flat.size), width)
        return np.stack([np.bincount(flat, xs, self.count), np.bincount(flat, ys, self.count)], 1) / sizes[:, None]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"labels": self.labels}

    @classmethod
    def from_arrays(cls, arrays) -> Superpixels:
        labels = arrays["labels"].astype(np.int32)
        return cls(labels, int(labels.max()) + 1)


@dataclass(frozen=True)
class Proposals:
    """Object proposals: boxes (V, 4) int x0, y0, x1, y1 (x1, y1 exclusive) in image pixels, objectness (V,)."""

    boxes: np.ndarray
    scores: np.ndarray

    def centres(self) -> np.ndarray:
        return np.stack([(self.boxes[:, 0] + self.boxes[:, 2]) / 2, (self.boxes[:, 1] + self.boxes[:, 3]) / 2], 1)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"boxes": self.boxes, "scores": self.scores}

    @classmethod
    def from_arrays(cls, arrays) -> Proposals:
        return cls(arrays["boxes"].astype(np.int64), arrays["scores"].astype(np.float64))


@dataclass(frozen=True)
class FlowGrid:
    """SIFT Flow from a target to a neighbour sampled on a grid over the target: ``flow`` (h, w, 2) (dx, dy) in
    full-image pixels, ``cost`` (h, w) the descriptor distance at the match. Stored at half precision."""

    flow: np.ndarray
    cost: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"flow": self.flow.astype(np.float16), "cost": self.cost.astype(np.float16)}

    @classmethod
    def from_arrays(cls, arrays) -> FlowGrid:
        return cls(arrays["flow"].astype(np.float32), arrays["cost"].astype(np.float32))


@dataclass(frozen=True)
class Alignment:
    """The bi-level alignment of one target image with one neighbour (paper Eqs. (1)-(3)).

    ``superpixel_matches`` (M, 2) int rows (i, j), ``superpixel_distances`` (M,) d(S_i, S_j) (Eq. 2), ``support`` (M,)
    the object-level support of each match; ``proposal_matches`` (P, 2) int rows (k, l) and
    ``proposal_similarities`` (P,) g(P_k, P_l) (Eq. 3, lower is more similar); ``flow_matches`` (F, 2) the matches of
    SIFT Flow alone (where most of a superpixel's pixels land), for the ablation without the bi-level alignment."""

    superpixel_matches: np.ndarray
    superpixel_distances: np.ndarray
    support: np.ndarray
    proposal_matches: np.ndarray
    proposal_similarities: np.ndarray
    flow_matches: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays) -> Alignment:
        return cls(**{name: arrays[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PseudoGT:
    """Bi-level pseudo ground truth of one image: two disjoint bool (H, W) masks; pixels in neither are unsure."""

    salient: np.ndarray
    background: np.ndarray

    @property
    def unsure(self) -> np.ndarray:
        return ~(self.salient | self.background)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"salient": self.salient, "background": self.background}

    @classmethod
    def from_arrays(cls, arrays) -> PseudoGT:
        return cls(arrays["salient"].astype(bool), arrays["background"].astype(bool))


@dataclass(frozen=True)
class SuperpixelFeatures:
    """Backbone features of one image's superpixels: float32 (S, F), row s for superpixel label s; for a backbone
    that is a saliency network, also its own saliency map of the image (float16 (H, W) in [0, 1])."""

    values: np.ndarray
    saliency: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"values": self.values} | ({} if self.saliency is None else {"saliency": self.saliency})

    @classmethod
    def from_arrays(cls, arrays) -> SuperpixelFeatures:
        return cls(arrays["values"], arrays.get("saliency"))


@dataclass(frozen=True)
class PairCorrespondence:
    """A target image and one retrieved neighbour: the retrieval distance and their alignment."""

    target: ImageEntry
    neighbour: ImageEntry
    distance: float
    alignment: Alignment


@dataclass
class ImageEvidence:
    """What the re-learner knows about one image (target or pool) given the base model."""

    entry: ImageEntry
    base_map: np.ndarray  #: float32 (H, W) in [0, 1]
    superpixels: Superpixels
    pseudo_gt: PseudoGT
    descriptor: np.ndarray  #: (S, F + cues) backbone features and saliency cues of each superpixel
    trusted_salient: np.ndarray  #: (S,) share of pseudo-GT trusted salient pixels
    trusted_background: np.ndarray  #: (S,) share of pseudo-GT trusted background pixels
    base_mean: np.ndarray  #: (S,) mean base value

    @property
    def unsure(self) -> np.ndarray:
        return 1.0 - self.trusted_salient - self.trusted_background

    def relearned(self, min_unsure: float) -> np.ndarray:
        """bool (S,): the superpixels the re-learner handles (pseudo-GT unsure on at least ``min_unsure`` of them)."""
        return self.unsure >= min_unsure


@dataclass
class TargetPairs:
    """The instance pairs of one target image: for each superpixel, up to M aligned superpixels by descending g."""

    evidence: ImageEvidence
    neighbours: list[ImageEvidence]
    source: np.ndarray  #: (S, M) int: which neighbour (index into ``neighbours``), -1 where missing
    aligned: np.ndarray  #: (S, M) int: the aligned superpixel in that neighbour, -1 where missing
    similarity: np.ndarray  #: (S, M) g in [0, 1], 0 where missing
    cf: np.ndarray = field(repr=False)  #: (S, M, D) pair features, zeros where missing

    @property
    def valid(self) -> np.ndarray:
        return self.source >= 0

    def aligned_share(self, shares: str) -> np.ndarray:
        """(S, M) a per-superpixel array (an attribute of ImageEvidence) of each aligned superpixel; 0 where missing."""
        out = np.zeros(self.source.shape)
        for k, neighbour in enumerate(self.neighbours):
            hit = self.source == k
            out[hit] = getattr(neighbour, shares)[self.aligned[hit]]
        return out


@dataclass
class TrainingImage:
    """What one labelled training image gives: the pair filter's candidate pairs and their Table I labels, and the
    rows of its re-learned superpixels (unsure, with a valid pair) for the joint re-learner."""

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
    start_map: np.ndarray  #: the map the re-learner corrects (the base, or the base fused with the knowledge map)
    gt: np.ndarray


@dataclass
class WrapOutcome:
    """The Our(X) map of one image, and whether the re-learner changed anything (False: the base map was kept)."""

    entry: ImageEntry
    saliency: np.ndarray
    relearned: bool
    relearned_superpixels: int = 0
