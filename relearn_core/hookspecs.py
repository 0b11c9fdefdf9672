"""Every hook specification of relearn (pluggy project name ``relearn``).

An adapter is a module or object with ``@hookimpl`` functions for some of these hooks. Built-in adapters
(``relearn_adapters``), adapters found through the ``relearn.adapters`` entry-point group and adapter files given
with ``--adapter path/to/file.py`` are registered the same way.

Dispatch works by name: :func:`relearn_predict` and :func:`relearn_extract_features` are ``firstresult`` hooks,
and an implementation returns ``None`` for a name that is not its own, so exactly one adapter answers each call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pluggy

PROJECT = "relearn"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter tells about the base model it provides."""

    name: str  #: the ``--base`` name, lower case, unique among all adapters
    description: str  #: one line
    paper: str = ""  #: title and authors of the model's paper
    venue: str = ""  #: e.g. "CVPR"
    year: int | None = None
    predicts_from: str = "network"  #: how maps are made: "maps" (precomputed files), "network", or "algorithm"
    options: Mapping[str, Any] = field(default_factory=dict)  #: defaults (e.g. map-name suffix, input size)


@dataclass(frozen=True)
class BackboneInfo:
    """A deep-feature extractor usable by the re-learner's features stage."""

    name: str
    description: str
    channels: tuple[int, ...]  #: channels of each feature map returned, coarsest last
    needs_weights: str = ""  #: where its weights come from, shown to the user; empty when none are needed


@hookspec
def relearn_adapters() -> Sequence[AdapterInfo]:
    """Return the adapters (base models) this plugin provides.

    Called once when the plugin manager is built. Every name must be unique across all plugins; two adapters with
    one name are an error naming both sources.
    """


@hookspec(firstresult=True)
def relearn_predict(
    adapter: str, images: Sequence[np.ndarray], names: Sequence[str], options: Mapping[str, Any]
) -> list[np.ndarray] | None:
    """Predict saliency for a batch of images with the adapter called ``adapter``.

    :param adapter: the adapter's name; return ``None`` when it is not one of yours.
    :param images: RGB uint8 arrays of shape (H, W, 3), one per image (sizes may differ).
    :param names: the images' file stems, in the same order (used by adapters that read precomputed maps).
    :param options: the adapter's options: its registry defaults overlaid with the user's (``maps`` folder,
        ``device``, model file, ...).
    :return: one float32 array per image, shape (H, W) of that image, values in [0, 1].
        Raise an exception for an image that cannot be predicted; relearn names the adapter and image.
    """


@hookspec
def relearn_backbones() -> Sequence[BackboneInfo]:
    """Return the feature backbones this plugin provides (an adapter may offer its own network's features here)."""


@hookspec(firstresult=True)
def relearn_extract_features(backbone: str, images: "torch.Tensor", device: str) -> list["torch.Tensor"] | None:  # noqa: F821
    """Compute deep feature maps with the backbone called ``backbone``.

    :param backbone: the backbone's name; return ``None`` when it is not one of yours.
    :param images: float32 tensor (N, 3, H, W), RGB in [0, 1], on ``device``.
    :param device: a torch device string ("cpu", "cuda", ...).
    :return: a list of feature maps (N, C_k, H_k, W_k), one per level listed in ``BackboneInfo.channels``.
    """
