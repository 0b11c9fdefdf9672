"""How re-learning is evaluated, shared by ``relearn table`` and benchmarks/relearn_cv.py: the k-fold split by image
id, and the components of the paper's Fig. 11 ablation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def folds_of(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each of ``count`` sorted ids: its position in RandomState(seed).permutation(count), mod ``folds``."""
    fold = np.empty(count, np.int64)
    fold[np.random.RandomState(seed).permutation(count)] = np.arange(count) % folds
    return fold


@dataclass(frozen=True)
class Component:
    """One component of Fig. 11: what it changes in the full method's configuration, and whether the extra pool
    (images beyond the training set) is in its pool."""

    name: str
    overrides: Mapping[str, Any]
    extra_pool: bool
    description: str


FULL = "C6"
COMPONENTS = (
    Component(
        "C2",
        {"alignment": "flow", "use_filter": False},
        False,
        "joint re-learning without the pair filter (every aligned pair kept), SIFT Flow matches, no extra pool",
    ),
    Component(
        "C3",
        {"alignment": "flow", "joint": {"neighbours": 1}},
        False,
        "with the filter, one classifier (M = 1, the most trusted neighbour)",
    ),
    Component("C4", {"alignment": "flow"}, False, "with the filter, M = 5 classifiers and the joint classifier"),
    Component("C5", {"alignment": "flow"}, True, "C4 with the pool enlarged by the extra pool images (pseudo-GT only)"),
    Component(FULL, {}, True, "C5 with the bi-level top-K alignment of Eq. (1): the full method, Our(X)"),
)
"""C1 is the base itself; C2..C6 each a re-learner of their own."""

BEYOND = (
    Component(
        "paper join",
        {"join": "paper"},
        True,
        "the full method with the paper's join (corrections only where the two CRFs leave the base unsure, no fusion)",
    ),
    Component(
        "no correspondence",
        {"alignment": "none"},
        True,
        "each target superpixel re-learned alone: no retrieval, flow, alignment or pair filter",
    ),
    Component(
        "fusion only",
        {"joint": {"epochs": 0}},
        True,
        "the base fused with the backbone's own saliency map, no correction: what the knowledge alone gives",
    ),
    Component(
        "label transfer",
        {"label_transfer": True},
        True,
        "labelled neighbours lend their masks instead of their pseudo-GT",
    ),
)
"""Variants beyond Fig. 11 that measure this implementation's own choices."""


def component(name: str) -> Component:
    return next(c for c in (*COMPONENTS, *BEYOND) if c.name == name)
